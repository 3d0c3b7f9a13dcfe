//go:build race

package e2e

// Under `go test -race` the server is built with the race detector as well.
func init() { raceBuild = true }
