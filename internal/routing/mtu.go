package routing

// Encapsulation overhead of VXLAN: outer IP header + UDP (8) + VXLAN (8) + inner Ethernet (14).
const (
	VXLANOverheadIPv4 = 20 + 8 + 8 + 14 // 50
	VXLANOverheadIPv6 = 40 + 8 + 8 + 14 // 70
)

// DefaultUnderlayMTU stands in when the underlay's MTU is unknown (0).
const DefaultUnderlayMTU = 1500

// PodMTU is the MTU pods get: the underlay's minus what the mode adds to every packet. Auto
// mode pays the VXLAN overhead even towards native peers, because a pod's MTU is one number
// for all its destinations and some of them are behind the tunnel (Calico does the same). An
// override (not 0) wins over everything.
func PodMTU(underlayMTU int, mode Mode, outerIPv6 bool, override int) int {
	if override > 0 {
		return override
	}
	if underlayMTU <= 0 {
		underlayMTU = DefaultUnderlayMTU
	}
	if mode == ModeNative {
		return underlayMTU
	}
	if outerIPv6 {
		return underlayMTU - VXLANOverheadIPv6
	}
	return underlayMTU - VXLANOverheadIPv4
}
