package trace

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fastudp/fastudp/core"
)

// PreviewLen is how many payload bytes [FormatOutput] quotes.
const PreviewLen = 24

// FormatOutput formats o on one line, deterministically: the kind, then the
// fields that matter for that kind in a fixed order, payloads last as their
// length, GSO segmentation and a quoted preview. Flow ids are INDEX#GEN, times
// are durations since the clock's epoch, a PROXY v2 header is hex grouped by
// field (its 12-byte signature shown as "sig" when it is the right one).
func FormatOutput(o *core.Output) string {
	var b strings.Builder
	b.WriteString(o.Kind.String())
	switch o.Kind {
	case core.OutSelectBackend:
		fmt.Fprintf(&b, " flow=%v listener=%d cluster=%d key=%016x client=%v local=%v",
			o.Flow, o.Listener, o.Cluster, o.Key, o.Client, o.Local)
	case core.OutOpenUpstream:
		fmt.Fprintf(&b, " flow=%v listener=%d cluster=%d backend=%d addr=%v client=%v local=%v",
			o.Flow, o.Listener, o.Cluster, o.Backend.ID, o.Backend.Addr, o.Client, o.Local)
	case core.OutSendToBackend:
		fmt.Fprintf(&b, " flow=%v backend=%d", o.Flow, o.Backend.ID)
		writeTOS(&b, o.TOS)
		if o.Header != nil {
			b.WriteString(" hdr=")
			b.WriteString(FormatProxyHeader(o.Header))
		}
		writePayload(&b, o.Payload, o.SegmentSize)
	case core.OutSendToClient:
		fmt.Fprintf(&b, " flow=%v listener=%d from=%v to=%v", o.Flow, o.Listener, o.Local, o.Client)
		writeTOS(&b, o.TOS)
		writePayload(&b, o.Payload, o.SegmentSize)
	case core.OutArmTimer:
		b.WriteString(" ")
		b.WriteString(fmtTime(o.Deadline))
	case core.OutMetric:
		fmt.Fprintf(&b, " %v", o.Metric)
		if o.Flow != 0 {
			fmt.Fprintf(&b, " flow=%v", o.Flow)
		}
		if o.Metric == core.MetricFlowCreated {
			fmt.Fprintf(&b, " listener=%d cluster=%d", o.Listener, o.Cluster)
		}
	case core.OutCloseFlow:
		s := &o.Stats
		fmt.Fprintf(&b, " flow=%v %v listener=%d cluster=%d backend=%d client=%v local=%v life=%s..%s in=%d/%dB out=%d/%dB",
			o.Flow, o.CloseReason, o.Listener, o.Cluster, o.Backend.ID, o.Client, o.Local,
			fmtTime(s.Created), fmtTime(s.Closed), s.DatagramsIn, s.BytesIn, s.DatagramsOut, s.BytesOut)
	case core.OutDrop:
		fmt.Fprintf(&b, " %v datagrams=%d bytes=%d listener=%d", o.DropReason, o.Datagrams, o.Bytes, o.Listener)
		if o.Flow != 0 {
			fmt.Fprintf(&b, " flow=%v", o.Flow)
		}
	default:
		fmt.Fprintf(&b, " %+v", *o)
	}
	return b.String()
}

func writeTOS(b *strings.Builder, tos uint8) {
	if tos != 0 {
		fmt.Fprintf(b, " tos=0x%02x", tos)
	}
}

// writePayload writes " len=N [seg=S segs=K] "preview"[...]".
func writePayload(b *strings.Builder, p []byte, seg int) {
	fmt.Fprintf(b, " len=%d", len(p))
	if seg != 0 {
		n := 0
		if seg > 0 {
			n = (len(p) + seg - 1) / seg
		}
		fmt.Fprintf(b, " seg=%d segs=%d", seg, n)
	}
	b.WriteByte(' ')
	b.WriteString(Preview(p))
}

// Preview quotes the first [PreviewLen] bytes of p, followed by "..." when p
// is longer.
func Preview(p []byte) string {
	if len(p) <= PreviewLen {
		return strconv.Quote(string(p))
	}
	return strconv.Quote(string(p[:PreviewLen])) + "..."
}

var proxySig = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// FormatProxyHeader prints a PROXY v2 header as hex grouped by field,
// separated by dots: signature (as "sig" when correct), version/command,
// family/protocol, address length, then for AF_INET and AF_INET6 the source
// and destination addresses and ports. Whatever does not fit that layout is
// printed as one hex group, so a malformed header is still shown whole.
func FormatProxyHeader(h []byte) string {
	var groups []string
	if len(h) >= 12 && string(h[:12]) == string(proxySig) {
		groups = append(groups, "sig")
	} else {
		return hex.EncodeToString(h)
	}
	rest := h[12:]
	cut := func(n int) bool {
		if len(rest) < n {
			return false
		}
		groups = append(groups, hex.EncodeToString(rest[:n]))
		rest = rest[n:]
		return true
	}
	if cut(1) && cut(1) && cut(2) {
		fam := h[13]
		alen := int(h[14])<<8 | int(h[15])
		switch {
		case fam == 0x12 && alen == 12:
			_ = cut(4) && cut(4) && cut(2) && cut(2)
		case fam == 0x22 && alen == 36:
			_ = cut(16) && cut(16) && cut(2) && cut(2)
		}
	}
	if len(rest) > 0 {
		groups = append(groups, hex.EncodeToString(rest))
	}
	return strings.Join(groups, ".")
}

// fmtTime prints a time as the duration since the epoch ("1.5s"), or "never".
func fmtTime(t core.Time) string {
	if t == core.Never {
		return "never"
	}
	return time.Duration(t).String()
}
