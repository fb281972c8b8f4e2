"""hk clients: the scriptable command line and the Textual operator console."""
