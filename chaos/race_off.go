//go:build !race

package chaos

// raceEnabled is true when the tests run with -race: the server under test
// is then built with -race too.
const raceEnabled = false
