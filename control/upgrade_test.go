package control_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/control/controltest"
)

// upgrading is a fake controller that can upgrade.
type upgrading struct {
	*controltest.Controller
	res control.UpgradeResult
	err error
}

func (u *upgrading) Upgrade(context.Context) (control.UpgradeResult, error) { return u.res, u.err }

// TestUpgradeRoute: POST /v1/upgrade answers the Upgrader's result, its
// error as a 500 with the message, and 400 for a controller that cannot
// upgrade.
func TestUpgradeRoute(t *testing.T) {
	want := control.UpgradeResult{OldPID: 10, NewPID: 11, Flows: 3, Paused: 5 * time.Millisecond}
	u := &upgrading{Controller: newFake(), res: want}
	_, cl := serveUnix(t, u)
	ctx := context.Background()
	got, err := cl.Upgrade(ctx)
	if err != nil || got != want {
		t.Fatalf("Upgrade: %+v, %v; want %+v", got, err, want)
	}
	u.err = errors.New("version mismatch: protocol 2")
	_, err = cl.Upgrade(ctx)
	var ae *control.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 500 || ae.Message == "" {
		t.Fatalf("failed upgrade: %v", err)
	}
	_, plain := serveUnix(t, newFake())
	if _, err := plain.Upgrade(ctx); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("controller without Upgrader: %v, want ErrInvalid", err)
	}
}

// TestInheritedListener: a server on a handed-over listener answers on the
// same path; Release answers what is in progress and leaves the socket file
// to the inheriting server; AdoptSocketFile makes the heir remove it at
// Close.
func TestInheritedListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	old, err := control.Listen(path, newFake(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = old.Serve() }()
	f, err := old.ListenerFile()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := netFileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	heir := control.ListenInherited(ln, newFake(), quietLog())
	go func() { _ = heir.Serve() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := old.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Release removed the socket file: %v", err)
	}
	cl := control.NewClient(path)
	defer cl.Close()
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("the heir does not answer: %v", err)
	}
	if err := heir.AdoptSocketFile(path); err != nil {
		t.Fatal(err)
	}
	if err := heir.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file after the heir's Close: %v", err)
	}
}

func netFileListener(f *os.File) (net.Listener, error) {
	defer f.Close()
	return net.FileListener(f)
}
