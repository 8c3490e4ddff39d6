"""Flow fields: the parameter table, OpenCV and PyTorch flow, quantisation, scene cuts."""
