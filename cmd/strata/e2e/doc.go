// Package e2e drives a running registry with the real client tools people use
// against registries: crane, oras, regctl, skopeo and the docker CLI. It has no
// library code; everything lives in its _test.go files.
//
// By default TestMain builds ./cmd/strata into a temporary directory, starts
// `strata serve --dev` on a free 127.0.0.1 port with a temporary data
// directory, waits for GET /v2/ to answer 200, runs the tests, then stops the
// server with SIGTERM and checks that it exits cleanly. The server's stderr is
// printed when anything failed.
//
// Environment:
//
//	STRATA_E2E_URL             test this running registry (http://HOST:PORT) instead of
//	                           starting one: a cluster, or another registry for comparison
//	STRATA_E2E_BIN             start this strata binary instead of building one
//	STRATA_E2E_REQUIRE_TOOLS=1 a missing client tool fails its test (also when CI is set);
//	                           otherwise the test is skipped
//	STRATA_E2E_SKIP_REFERRERS_API=1  skip the checks that need the OCI 1.1 referrers API
//	                           (for registries without it, such as CNCF Distribution 3.1)
//	STRATA_E2E_VERBOSE=1       print the started server's stderr even when all passed
//
// Client tools are looked up in <repo>/bin/tools first (where `make tools`
// installs the pinned versions), then on PATH. The docker test runs only where
// `docker info` succeeds.
//
// Every test pushes into its own repositories under e2e/<tool>-<run id>-<n>/, so the
// suite can run repeatedly against a long-lived registry.
package e2e
