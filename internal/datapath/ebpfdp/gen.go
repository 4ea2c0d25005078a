package ebpfdp

// The program's C source is bpf/fastpath.c. The generated fastpath_bpfel.go and
// fastpath_bpfel.o are committed, so a plain `go build` needs no clang. To regenerate after
// changing the C (Debian: apt-get install clang llvm libbpf-dev linux-libc-dev):
//
//	go generate ./internal/datapath/ebpfdp
//
// The include path names the host's multiarch directory for <asm/types.h>; on arm64 use
// /usr/include/aarch64-linux-gnu.

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" fastpath ../../../bpf/fastpath.c
