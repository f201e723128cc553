"""The HTTP entry layer: the Twisted protocol, site and connection factory that hold the bounds of
``payloadtags.limits`` before any handler runs."""
