//! The VXLAN header ([RFC 7348 §5](https://www.rfc-editor.org/rfc/rfc7348#section-5)).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The inner Ethernet frame follows. The outer UDP and IP headers are the socket's.

use super::{Error, Field};

mod field {
    use super::Field;
    pub(super) const FLAGS: usize = 0;
    pub(super) const RESERVED1: Field = 1..4;
    pub(super) const VNI: Field = 4..7;
    pub(super) const RESERVED2: usize = 7;
    pub(super) const PAYLOAD: usize = 8;
}

/// Length of the VXLAN header.
pub(crate) const HEADER_LEN: usize = field::PAYLOAD;
/// The I flag: the VNI field is valid. RFC 7348 requires it set.
pub(crate) const FLAG_I: u8 = 0x08;
/// The largest VNI: the field is 24 bits wide.
#[cfg(test)]
pub(crate) const MAX_VNI: u32 = 0x00ff_ffff;

/// A view over a buffer that starts with a VXLAN header.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking its length; call [`check_len`](Self::check_len)
    /// before any accessor.
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after checking that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole VXLAN header.
    pub(crate) fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VXLAN Network Identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The bytes after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub(crate) fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI; bits above 24 are dropped.
    pub(crate) fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes both reserved fields, as RFC 7348 asks of senders.
    pub(crate) fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[field::RESERVED1].fill(0);
        buf[field::RESERVED2] = 0;
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The VNI.
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a header, accepting only the flags RFC 7348 defines (the I flag alone).
    /// Reserved fields are ignored on receipt, as the RFC says.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr, Error> {
        packet.check_len()?;
        if packet.flags() != FLAG_I {
            return Err(Error::Malformed);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The header a Linux vxlan device with id 42 sends: I flag, VNI 42, reserved zero.
    static HEADER_BYTES: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00];

    #[test]
    fn test_deconstruct() {
        let packet = VxlanPacket::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), FLAG_I);
        assert_eq!(packet.vni(), 42);
        assert_eq!(VxlanRepr::parse(&packet), Ok(VxlanRepr { vni: 42 }));
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xffu8; 8];
        let mut packet = VxlanPacket::new_unchecked(&mut bytes[..]);
        VxlanRepr { vni: 42 }.emit(&mut packet);
        assert_eq!(bytes, HEADER_BYTES);
    }

    #[test]
    fn vni_uses_24_bits() {
        let mut bytes = [0u8; 8];
        let mut packet = VxlanPacket::new_unchecked(&mut bytes[..]);
        VxlanRepr { vni: MAX_VNI }.emit(&mut packet);
        assert_eq!(bytes, [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
    }

    #[test]
    fn rejects_short_and_bad_flags() {
        assert_eq!(
            VxlanPacket::new_checked(&HEADER_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = HEADER_BYTES;
        bad[0] = 0x0c;
        let packet = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Err(Error::Malformed));
        bad[0] = 0x00;
        let packet = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Err(Error::Malformed));
    }
}
