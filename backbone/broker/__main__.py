"""`python -m backbone.broker`: run the disk broker (see `server`)."""

from backbone.broker.server import main

main()
