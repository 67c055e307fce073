//! Kernel sensors.
