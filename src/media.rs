//! Reading finished output files back with gstreamer-pbutils' Discoverer.
