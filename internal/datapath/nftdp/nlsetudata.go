package nftdp

import (
	"encoding/binary"
	"reflect"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nft prints a map's values in the byte order the set's user data names (nft writes it as
// NFTNL_UDATA_SET_DATABYTEORDER), and big-endian without it; google/nftables writes no such
// user data. The identity maps hold marks, in host byte order: without it `nft list` would
// show every identity byte-swapped, which an operator (and the policy benchmark's read-back)
// reads. So the message that makes such a map gets the user data nft would have written.
//
// google/nftables keeps a batch's messages unexported, and this is the one thing it cannot
// say: markHostByteOrderData reaches the last message by reflection. Should the library
// change its shape, nothing is patched (the table works the same; TestNetlinkMatchesNft
// shows the listing differ).
func markHostByteOrderData(c *nftables.Conn) {
	f := reflect.ValueOf(c).Elem().FieldByName("messages")
	if !f.IsValid() || f.Type() != reflect.TypeOf([]netlink.Message(nil)) {
		return
	}
	msgs := *(*[]netlink.Message)(unsafe.Pointer(f.UnsafeAddr()))
	if len(msgs) == 0 {
		return
	}
	m := &msgs[len(msgs)-1]
	if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSET) || len(m.Data) < 4 {
		return
	}
	const hostByteOrder = 1 // nft's BYTEORDER_HOST_ENDIAN
	extra := userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_DATABYTEORDER, hostByteOrder)
	m.Data = withUserdata(m.Data, extra)
}

// withUserdata returns a set message's data (the nfgenmsg header, then attributes) with
// extra appended to its NFTA_SET_USERDATA attribute, which it adds if there is none. Other
// attributes are copied as they are.
func withUserdata(data, extra []byte) []byte {
	out := append([]byte(nil), data[:4]...)
	var udata []byte
	for b := data[4:]; len(b) >= 4; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return data // not what it should be: leave it alone
		}
		padded := min((l+3)&^3, len(b))
		if binary.NativeEndian.Uint16(b[2:4])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == unix.NFTA_SET_USERDATA {
			udata = append(udata, b[4:l]...)
		} else {
			out = append(out, b[:padded]...)
		}
		b = b[padded:]
	}
	udata = append(udata, extra...)
	hdr := make([]byte, 4)
	binary.NativeEndian.PutUint16(hdr[0:2], uint16(4+len(udata)))
	binary.NativeEndian.PutUint16(hdr[2:4], unix.NFTA_SET_USERDATA)
	out = append(append(out, hdr...), udata...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return out
}
