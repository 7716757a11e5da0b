package bpf

import (
	"encoding/binary"

	"github.com/cilium/ebpf/asm"
)

// Map names, as the kernel and bpffs pins show them (at most 15 bytes).
const (
	mapSocks     = "fudp_socks"     // REUSEPORT_SOCKARRAY: u32 shard → socket
	mapConfig    = "fudp_config"    // ARRAY[1]: steerConfig
	mapOverrides = "fudp_overrides" // HASH: OverrideKey → u32 shard
	mapCPUs      = "fudp_cpus"      // ARRAY[possible CPUs]: u32 CPU → u32 shard
	mapStats     = "fudp_stats"     // PERCPU_ARRAY[numStats]: u64 counters
)

// steerConfig is the value of the config map's only entry. Offsets are
// those the program reads (cfg*).
type steerConfig struct {
	FNVSeeded uint64 // FNV-1a 64 state after the seed's 8 bytes (core/hash.go)
	Shards    uint32 // sockarray slots in use; 0 makes the program pass
	Mode      uint32 // progMode*
	Key       uint32 // progKey*
	Flags     uint32 // flag*
}

const (
	cfgFNVSeeded = 0
	cfgShards    = 8
	cfgMode      = 12
	cfgKey       = 16
	cfgFlags     = 20
)

// Values of steerConfig.Mode and Key.
const (
	progModeHash = 1
	progModeCPU  = 2
	progKeyFlow  = 0
	progKeyIP    = 1
)

// flagOverrides makes the program consult the override map. It is set when
// the first override is added (or a pinned override map holds entries at
// load), so that an unused map costs no lookup per datagram.
const flagOverrides = 1

// Indexes of the statistics map.
const (
	statSelected = iota
	statOverridden
	statNoSocket
	statUnparsed
	numStats
)

// struct sk_reuseport_md (include/uapi/linux/bpf.h), the program's context:
//
//	__bpf_md_ptr(void *, data);     // 0: the UDP header
//	__bpf_md_ptr(void *, data_end); // 8: end of the linear data
//	__u32 len;                      // 16
//	__u32 eth_protocol;             // 20: skb->protocol, a __be16 (ETH_P_IP, ETH_P_IPV6)
//	__u32 ip_protocol;              // 24
//	__u32 bind_inany;               // 28
//	__u32 hash;                     // 32: the kernel's 4-tuple hash
const (
	ctxData        = 0
	ctxDataEnd     = 8
	ctxEthProtocol = 20
)

// Offsets in the IP headers (from the network header) of the source address.
const (
	ip4SrcOff = 12
	ip6SrcOff = 8
)

// BPF_HDR_START_NET: bpf_skb_load_bytes_relative's offsets start at the
// network header (the context's data starts at the transport header).
const hdrStartNet = 1

// Stack slots (offsets from the frame pointer R10).
const (
	stkZero  = -4  // u32 0, the config key; then the statistics key
	stkIndex = -8  // u32 sockarray key passed to bpf_sk_select_reuseport
	stkCPU   = -12 // u32 the receiving CPU
	stkKey   = -32 // OverrideKey, 20 bytes: address at -32..-17
	stkAddr4 = -20 // the IPv4 address inside the mapped form (key bytes 12..15)
	stkPort  = -16 // client port, network order (key bytes 16..17)
	stkPad   = -14 // key bytes 18..19
)

// Constants of the affinity hash (core/hash.go).
const (
	fnvOffset64 = 0xcbf29ce484222325
	fnvPrime64  = 0x100000001b3
	mix1        = 0xbf58476d1ce4e5b9
	mix2        = 0x94d049bb133111eb
)

// imm64 returns v as the signed immediate LoadImm takes (the same bits).
func imm64(v uint64) int64 { return int64(v) }

// fnvSeeded returns the FNV-1a state after the seed's 8 little-endian bytes,
// as core.AffinityHash starts.
func fnvSeeded(seed uint64) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < 8; i++ {
		h ^= seed >> (8 * i) & 0xff
		h *= fnvPrime64
	}
	return h
}

// wire16 returns the register value of a big-endian (network order) 16-bit
// field loaded on this host, such as skb->protocol.
func wire16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// mappedPrefix is key bytes 8..11 of an IPv4-mapped address (00 00 ff ff)
// as one 32-bit store on this host.
func mappedPrefix() int32 {
	return int32(binary.NativeEndian.Uint32([]byte{0, 0, 0xff, 0xff}))
}

// program returns the SK_REUSEPORT program. Map loads carry the map names as
// references, to be associated by the loader.
//
// Registers: R6 the context, R7 the config value, R8 the shard count, R9 the
// statistic to count at the end; R0..R5 are scratch (helpers clobber them).
//
//	cfg = config[0]; if none or shards == 0: pass
//	if overrides are off and mode is cpu: goto cpu
//	key = {client address (IPv4 mapped), client port}    // else pass (unparsed)
//	if overrides are on and overrides[key] exists: select it
//	cpu:  select cpus[cpu] (or cpu % shards)
//	hash: h = FNV-1a(fnv_seeded, ip bytes [, port bytes]); select splitmix64(h) % shards
//	select: bpf_sk_select_reuseport(ctx, socks, &index, 0); an error (empty
//	        slot) leaves the choice to the kernel
//	count the outcome; return SK_PASS
func program() asm.Instructions {
	const (
		pass     = "pass" // R9 holds the statistic
		parse    = "parse"
		ipv4     = "ipv4"
		keyReady = "key_ready"
		policy   = "policy"
		cpu      = "cpu"
		cpuMod   = "cpu_mod"
		hash6    = "hash6"
		hashPort = "hash_port"
		finalize = "finalize"
		sel      = "select"
		ret      = "return"
	)
	ethIP, ethIPv6 := wire16(0x0800), wire16(0x86dd)

	// hashBytes appends h ^= byte; h *= prime for the stack bytes at
	// off..off+n-1, with the hash in R0 and the prime in R2.
	hashBytes := func(insns asm.Instructions, off int16, n int) asm.Instructions {
		for i := range n {
			insns = append(insns,
				asm.LoadMem(asm.R1, asm.RFP, off+int16(i), asm.Byte),
				asm.Xor.Reg(asm.R0, asm.R1),
				asm.Mul.Reg(asm.R0, asm.R2),
			)
		}
		return insns
	}

	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("fastudp_steer"),
		asm.Mov.Imm(asm.R9, statUnparsed),
		asm.StoreImm(asm.RFP, stkZero, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapConfig),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stkZero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R8, asm.R7, cfgShards, asm.Word),
		asm.JEq.Imm(asm.R8, 0, pass),
		asm.LoadMem(asm.R1, asm.R7, cfgFlags, asm.Word),
		asm.And.Imm(asm.R1, flagOverrides),
		asm.JNE.Imm(asm.R1, 0, parse),
		asm.LoadMem(asm.R1, asm.R7, cfgMode, asm.Word),
		asm.JEq.Imm(asm.R1, progModeCPU, cpu),

		// The client port: the first two bytes of the UDP header, read
		// directly after checking the header is in the linear data.
		asm.LoadMem(asm.R2, asm.R6, ctxData, asm.DWord).WithSymbol(parse),
		asm.LoadMem(asm.R3, asm.R6, ctxDataEnd, asm.DWord),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 8),
		asm.JGT.Reg(asm.R4, asm.R3, pass),
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Half),
		asm.StoreMem(asm.RFP, stkPort, asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, stkPad, 0, asm.Half),
		// The client address, from the network header.
		asm.LoadMem(asm.R1, asm.R6, ctxEthProtocol, asm.Word),
		asm.JEq.Imm(asm.R1, ethIP, ipv4),
		asm.JNE.Imm(asm.R1, ethIPv6, pass),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ip6SrcOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stkKey),
		asm.Mov.Imm(asm.R4, 16),
		asm.Mov.Imm(asm.R5, hdrStartNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),
		asm.Ja.Label(keyReady),

		asm.Mov.Imm(asm.R1, 0).WithSymbol(ipv4),
		asm.StoreMem(asm.RFP, stkKey, asm.R1, asm.DWord),
		asm.StoreImm(asm.RFP, stkKey+8, int64(mappedPrefix()), asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ip4SrcOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stkAddr4),
		asm.Mov.Imm(asm.R4, 4),
		asm.Mov.Imm(asm.R5, hdrStartNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),

		// A per-flow override wins.
		asm.LoadMem(asm.R1, asm.R7, cfgFlags, asm.Word).WithSymbol(keyReady),
		asm.And.Imm(asm.R1, flagOverrides),
		asm.JEq.Imm(asm.R1, 0, policy),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapOverrides),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stkKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, policy),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.Mov.Imm(asm.R9, statOverridden),
		asm.Ja.Label(sel),

		asm.LoadMem(asm.R1, asm.R7, cfgMode, asm.Word).WithSymbol(policy),
		asm.JEq.Imm(asm.R1, progModeCPU, cpu),
		// hash: FNV-1a over the address bytes (4 for IPv4, else 16).
		asm.LoadMem(asm.R0, asm.R7, cfgFNVSeeded, asm.DWord),
		asm.LoadImm(asm.R2, fnvPrime64, asm.DWord),
		asm.LoadMem(asm.R1, asm.R6, ctxEthProtocol, asm.Word),
		asm.JNE.Imm(asm.R1, ethIP, hash6),
	}
	insns = hashBytes(insns, stkAddr4, 4)
	insns = append(insns, asm.Ja.Label(hashPort))
	h6 := len(insns)
	insns = hashBytes(insns, stkKey, 16)
	insns[h6] = insns[h6].WithSymbol(hash6)
	insns = append(insns,
		// The port, high byte first, for the flow key.
		asm.LoadMem(asm.R1, asm.R7, cfgKey, asm.Word).WithSymbol(hashPort),
		asm.JNE.Imm(asm.R1, progKeyFlow, finalize),
	)
	insns = hashBytes(insns, stkPort, 2)
	insns = append(insns,
		// splitmix64's finaliser, then the shard.
		asm.Mov.Reg(asm.R1, asm.R0).WithSymbol(finalize),
		asm.RSh.Imm(asm.R1, 30),
		asm.Xor.Reg(asm.R0, asm.R1),
		asm.LoadImm(asm.R1, imm64(mix1), asm.DWord),
		asm.Mul.Reg(asm.R0, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 27),
		asm.Xor.Reg(asm.R0, asm.R1),
		asm.LoadImm(asm.R1, imm64(mix2), asm.DWord),
		asm.Mul.Reg(asm.R0, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 31),
		asm.Xor.Reg(asm.R0, asm.R1),
		asm.Mod.Reg(asm.R0, asm.R8),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R9, statSelected),
		asm.Ja.Label(sel),

		// cpu: the receiving CPU's shard.
		asm.FnGetSmpProcessorId.Call().WithSymbol(cpu),
		asm.StoreMem(asm.RFP, stkCPU, asm.R0, asm.Word),
		asm.Mov.Imm(asm.R9, statSelected),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCPUs),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stkCPU),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, cpuMod),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.Ja.Label(sel),
		asm.LoadMem(asm.R1, asm.RFP, stkCPU, asm.Word).WithSymbol(cpuMod),
		asm.Mod.Reg(asm.R1, asm.R8),

		// Select slot R1. An empty slot fails with ENOENT: nothing is
		// selected and SK_PASS lets the kernel choose by its hash.
		asm.StoreMem(asm.RFP, stkIndex, asm.R1, asm.Word).WithSymbol(sel),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference(mapSocks),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stkIndex),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.Mov.Imm(asm.R9, statNoSocket),

		// Count the outcome in R9 and pass.
		asm.StoreMem(asm.RFP, stkZero, asm.R9, asm.Word).WithSymbol(pass),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapStats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stkZero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, ret),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 1).WithSymbol(ret), // SK_PASS
		asm.Return(),
	)
	return insns
}
