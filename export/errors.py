class ExportError(Exception):
    """A problem the user can fix. The message is one paragraph naming the problem and the fix."""
