package config

import (
	"fmt"
	"strings"
)

// Error is the one error [Parse], [Load], [Config.Validate] and
// [Flags.Config] return for an invalid configuration. The command line prints
// it and exits with status 2.
//
// A config file error reads
//
//	fastudp.toml:14: cluster "dns": key "front_timeout": "30x" is not a duration
//
// and a quick-start flag error
//
//	--backend "10.0.0.1": not an ip:port
type Error struct {
	// File is the config file; "" when the config came from flags or code.
	File string
	// Line is the 1-based line in File; 0 when unknown.
	Line int
	// Flag is the quick-start flag, with its value when it has one, that set
	// the offending value (for example `--backend "10.0.0.1"`); "" for a file.
	Flag string
	// Item names the listener, cluster or backend, as in `cluster "dns"`; ""
	// for a process-wide key.
	Item string
	// Key is the offending key; "" when the error is about a whole item.
	Key string
	// Msg says what is wrong.
	Msg string
	// Err is the underlying error, if any (a file that cannot be read).
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Flag != "":
		return e.Flag + ": " + e.Msg
	}
	if e.Item != "" {
		b.WriteString(e.Item)
		b.WriteString(": ")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "key %q: ", e.Key)
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// origin records where a config's values came from: a file's lines or the
// quick-start flags. Values are addressed by path: "batch_size",
// "listener[0]", "cluster[1].backend[2].weight".
type origin struct {
	file  string
	lines map[string]int    // path → line of its key, table header or array element
	flags map[string]string // path → the flag that set it
}

// newError returns the error for path, locating it at path or its nearest
// recorded ancestor.
func (o *origin) newError(path, item, key, msg string) *Error {
	e := &Error{Item: item, Key: key, Msg: msg}
	if o == nil {
		return e
	}
	e.File = o.file
	for p := path; p != ""; p = parentPath(p) {
		if o.lines != nil {
			if l, ok := o.lines[p]; ok {
				e.Line = l
				return e
			}
		}
		if o.flags != nil {
			if f, ok := o.flags[p]; ok {
				e.Flag = f
				return e
			}
		}
	}
	return e
}

// line returns the recorded line of path (not of its ancestors), or 0.
func (o *origin) line(path string) int {
	if o == nil {
		return 0
	}
	return o.lines[path]
}

// parentPath drops the last ".key" or "[index]" of path.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(parent string, i int) string {
	return fmt.Sprintf("%s[%d]", parent, i)
}

// errorList collects errors and reports the first by position, so a file
// with several mistakes names the earliest one however it was walked.
type errorList []*Error

func (l *errorList) add(e *Error) { *l = append(*l, e) }

func (l errorList) first() error {
	if len(l) == 0 {
		return nil
	}
	best := l[0]
	for _, e := range l[1:] {
		if e.Line > 0 && (best.Line == 0 || e.Line < best.Line) {
			best = e
		}
	}
	return best
}
