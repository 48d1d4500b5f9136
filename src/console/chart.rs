//! Charts as SVG, rendered on the server.
