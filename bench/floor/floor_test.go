package floor

import (
	"testing"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
)

func runLoad(t *testing.T, cfg loadgen.Config) loadgen.Stats {
	t.Helper()
	g, err := loadgen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Start()
	time.Sleep(300 * time.Millisecond)
	g.Stop(5 * time.Second)
	return g.Stats(0)
}

func TestRelay(t *testing.T) {
	for _, responses := range []int{0, 1} {
		e, err := loadgen.StartEcho(loadgen.EchoConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		f, err := StartRelay(Config{Listen: loopback0(), Backend: e.Addr(), Responses: responses})
		if err != nil {
			t.Fatal(err)
		}
		for _, rate := range []float64{0, 5000} {
			if responses == 1 && rate > 0 {
				// The open loop may have two requests of one client in
				// flight: the second reply comes after the flow closed.
				continue
			}
			s := runLoad(t, loadgen.Config{Target: f.Addr(), Conns: 8, Sources: loadgen.LoopbackSources(3),
				Rate: rate, Timeout: 5 * time.Second})
			if s.Sent == 0 || s.Received != s.Sent || s.Loss() != 0 {
				t.Errorf("responses %d rate %v: %+v", responses, rate, s)
			}
		}
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestDNS(t *testing.T) {
	d, err := loadgen.StartDNS(loadgen.DNSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, err := StartDNS(Config{Listen: loopback0(), Backend: d.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, rate := range []float64{0, 5000} {
		s := runLoad(t, loadgen.Config{Target: f.Addr(), Conns: 8, DNS: loadgen.GenerateQueries(100),
			Rate: rate, Timeout: 5 * time.Second})
		if s.Sent == 0 || s.Received != s.Sent || s.Loss() != 0 {
			t.Errorf("rate %v: %+v", rate, s)
		}
	}
}
