package shard

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/core"
)

// BenchmarkShedFullQueue measures what a shard spends to shed one datagram
// of a new-flow flood when it never waits for one: a listener queue of
// queued 64-byte datagrams from distinct sources across 127.0.0.0/8 is
// filled while the shard is not running (max_flows 1, so all but the first
// are shed), then the shard is started and timed until it has read them
// all. Every recvmmsg returns a full batch, as under a flood at or past the
// shard's capacity. Reported per shed datagram: the process's CPU time
// (cpu-ns/shed: the shard's thread is the only busy one) and the wall time
// (wall-ns/shed, which includes waiting for a CPU on a busy machine).
// 1e9 / cpu-ns/shed is the shed capacity of a shard with a core to itself.
func BenchmarkShedFullQueue(b *testing.B) {
	const queued = 30000
	echo, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer echo.Close()
	var cpu, wall time.Duration
	var shed uint64
	for range b.N {
		o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: echo.Addr()}})
		o.Core.MaxFlows = 1
		o.Listen = batchio.ListenOptions{RecvBuffer: 256 << 20}
		g, err := NewGroup(o)
		if err != nil {
			b.Fatal(err)
		}
		sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: g.Addrs()[0], Sockets: 4,
			Sources: loadgen.LoopbackSources(queued), Rate: 1e8, Count: queued})
		if err != nil {
			b.Fatal(err)
		}
		sp.Start()
		<-sp.Done()
		sp.Stop(0)
		sp.Close()
		s := g.Shards()[0]
		ctx, cancel := context.WithCancel(context.Background())
		c0, t0 := processCPU(), time.Now()
		g.Start(ctx)
		deadline := t0.Add(waitTimeout)
		k := s.Counters()
		for k.Listener(0, ListenerRxDatagrams)+k.Listener(0, ListenerKernelDrops) < queued {
			if time.Now().After(deadline) {
				b.Fatalf("the shard read %d of %d datagrams", k.Listener(0, ListenerRxDatagrams), queued)
			}
			time.Sleep(200 * time.Microsecond)
		}
		wall += time.Since(t0)
		cpu += processCPU() - c0
		if d := k.Listener(0, ListenerKernelDrops); d != 0 {
			b.Fatalf("the kernel dropped %d of the %d queued datagrams (receive buffer too small)", d, queued)
		}
		shed += k.Listener(0, ListenerDropBase+int(core.DropShed))
		cancel()
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(shed), "cpu-ns/shed")
	b.ReportMetric(float64(wall.Nanoseconds())/float64(shed), "wall-ns/shed")
	b.ReportMetric(0, "ns/op")
}

// processCPU returns the user and system time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
