"""attnserve's torch-free core, shared by the exporter and the server: the model repository's manifest,
image fitting, and the ``attnserve`` command."""
