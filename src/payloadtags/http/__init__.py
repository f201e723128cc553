"""The HTTP entry layer: connection, request and body bounds that hold before any handler runs.

``limits`` holds the settings (imported by the command line, so it stays free of Twisted); ``channel``
the Twisted protocol, site and connection factory built from them.
"""
