//! GStreamer graph building per egress type and per output container.
