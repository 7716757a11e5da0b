package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fastudp/fastudp/dns"
)

// slowDNSBackend answers each UDP query (echo with QR set) delay after it
// arrives, so queries are in flight during an upgrade.
func slowDNSBackend(t *testing.T, delay time.Duration) netip.AddrPort {
	t.Helper()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n <= 2 {
				continue
			}
			a := append([]byte(nil), buf[:n]...)
			a[2] |= 0x80
			time.AfterFunc(delay, func() { _, _ = u.WriteToUDPAddrPort(a, from) })
		}
	}()
	return u.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestUpgradeCarriesDNSQueries upgrades a DNS-mode proxy twice while
// clients send a query every 10 ms to a backend that answers each 300 ms
// late, so queries are always in flight at the handover: every query sent
// around the upgrades is answered exactly once, under its client's ID and
// with its question, and the upgrade reports queries carried.
func TestUpgradeCarriesDNSQueries(t *testing.T) {
	be := slowDNSBackend(t, 300*time.Millisecond)
	front := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeTCPAndUDPPort(t)))
	conf := fmt.Sprintf("shards = 2\ngrace_period = \"1s\"\ncontrol = \"@SOCK@\"\n[[listener]]\nname = \"dns\"\naddress = %q\ncluster = \"c\"\n"+
		"[[cluster]]\nname = \"c\"\nmode = \"dns\"\n  [[cluster.backend]]\n  address = %q\n", front.String(), be.String())
	p := startUpgradable(t, conf)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		sent     atomic.Int64
	)
	stop := make(chan struct{})
	ask := func(i int) {
		defer wg.Done()
		fail := func(f string, args ...any) {
			mu.Lock()
			failures = append(failures, fmt.Sprintf("query %d: ", i)+fmt.Sprintf(f, args...))
			mu.Unlock()
		}
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
		if err != nil {
			fail("%v", err)
			return
		}
		defer c.Close()
		id, name := uint16(i*7+3), fmt.Sprintf("q%d.upgrade.example.test.", i)
		if _, err := c.Write(mustQuery(t, id, name, 1, 0)); err != nil {
			fail("%v", err)
			return
		}
		buf := make([]byte, 4096)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			fail("no answer: %v", err)
			return
		}
		q, err := dns.ParseQuestion(buf[:n])
		if err != nil || dns.ID(buf[:n]) != id || dns.NameString(q.Name) != name {
			fail("answer id %d question %v (%v), want %d %s", dns.ID(buf[:n]), q, err, id, name)
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			fail("answered twice")
		}
	}
	wg.Add(1)
	go func() { // the query source
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			sent.Add(1)
			go ask(i)
		}
	}()
	carried := 0
	for i := range 2 {
		time.Sleep(500 * time.Millisecond)
		old := p.pid(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := p.ctl.Upgrade(ctx)
		cancel()
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("upgrade %d: %v", i, err)
		}
		if got := p.waitNewPID(t, old); got != res.NewPID {
			t.Errorf("pid %d, upgrade said %d", got, res.NewPID)
		}
		t.Logf("upgrade %d: %d DNS queries carried, paused %v", i, res.DNSQueriesCarried, res.Paused)
		carried += res.DNSQueriesCarried
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	if carried == 0 {
		t.Error("no DNS query was in flight at either upgrade")
	}
	t.Logf("%d queries sent, %d failed", sent.Load(), len(failures))
}
