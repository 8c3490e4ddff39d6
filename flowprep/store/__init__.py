"""The flow store: its format and codecs, the reader, the writer and the finished-video parts."""
