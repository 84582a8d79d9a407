"""GLUE data: tasks, loading from the hub or a TSV folder, batching."""
