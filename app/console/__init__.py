"""`backbone console`: the web view of a running backbone (`server`), its login (`auth`), what it
reads (`snapshot`) and its pages (`views`)."""
