//! Dataplane: VXLAN encapsulation between the node's TUN device and its peers.
