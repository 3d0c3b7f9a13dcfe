//go:build !failpoints

package failpoint

// Enabled is false: this build has no failpoints, and every call site's
// block is dead code.
const Enabled = false

// Eval does nothing in a build without failpoints (call sites never reach
// it: they test Enabled first).
func Eval(string) error { return nil }

// Enable fails with ErrNotBuilt.
func Enable(name, spec string) error { return ErrNotBuilt }

// Disable does nothing.
func Disable(string) {}

// Status is empty.
func Status() []State { return nil }
