package main

import (
	"fmt"
	"net"
	"os"
)

// sdNotify sends state to the service manager (systemd's sd_notify
// protocol: one datagram to $NOTIFY_SOCKET) and does nothing when fastudp
// does not run under one. With Type=notify, "READY=1" says the listeners
// are bound; an upgrade sends "MAINPID=N" so the service follows the new
// process (which needs NotifyAccess=all, as it comes from outside the
// main process).
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
