"""Frame and flow trees of other tools: their layouts, import into a store, export from one."""
