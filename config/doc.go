// Package config reads, checks and converts fastudp's configuration: the TOML
// file of `fastudp run --config FILE` and the quick-start flags of `fastudp
// run --listen ADDR --backend ADDR ...`.
//
// [Parse] and [Load] return a validated [*Config] with every default filled
// in, or one [*Error] naming the file, line and key of the first mistake.
// [Flags] builds the same Config from the quick-start flags, with errors
// naming the flag. The converters [Config.CoreConfig] and
// [Config.ListenerCoreConfig] map it onto the core's knobs, so the shell does
// not repeat that mapping.
//
// The schema, with every key's default and unit, is docs/configuration.md;
// testdata/fastudp.toml is a commented example that uses every key.
package config
