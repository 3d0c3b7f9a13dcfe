// Package deploy holds Strata's deployment files (see README.md). The Go
// side is only what other packages need of them: the compose file, which
// the chaos suite's compose backend (`strata chaos run --backend compose`)
// runs as it is, with an override of its own.
package deploy

import _ "embed"

// ComposeFile is compose.yaml: 3 meta, 6 storage and 2 api containers of
// the strata image behind strata-lb, each on a fixed address of a private
// /24 (STRATA_NET).
//
//go:embed compose.yaml
var ComposeFile []byte
