//! The overlayd CNI plugin.
