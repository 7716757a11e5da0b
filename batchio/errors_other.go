//go:build !linux

package batchio

func classifyErrno(err error) ErrorKind { return KindOther }

// IsGSOError reports whether err means the kernel refused segmentation
// offload. GSO exists only on Linux, so it is always false here.
func IsGSOError(err error) bool { return false }

func classifyBoxed(error) (ErrorKind, bool) { return KindOther, false }
