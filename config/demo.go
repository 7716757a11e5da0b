package config

import _ "embed"

//go:embed demo.toml
var demoTOML []byte

// DemoTOML returns the text of the embedded demo config, for `fastudp demo`
// to show.
func DemoTOML() []byte { return append([]byte(nil), demoTOML...) }

// Demo returns the embedded demo config: listener "demo" on 127.0.0.1:5300
// in front of cluster "demo", whose backends "echo1" (127.0.0.1:5301) and
// "echo2" (127.0.0.1:5302) are the echo servers `fastudp demo` starts. Every
// datagram is its own flow (responses = 1), and affinity is ip-port so that
// loopback clients, which share one IP, spread over both backends. Each call
// returns a fresh copy.
func Demo() *Config {
	c, err := Parse(demoTOML, "demo.toml")
	if err != nil {
		panic("config: embedded demo.toml: " + err.Error()) // TestDemo keeps it valid
	}
	return c
}
