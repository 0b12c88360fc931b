"""Reading backups back: opening and verifying a stream, restoring it onto targets.

    verify   opening a backup (the one place its FormatError becomes the user's error), verify
    targets  new files, block devices, NBD exports behind one interface
    restore  the loop that writes records to targets and commits them only once all verified
"""
