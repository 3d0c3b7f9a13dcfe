// Package api is Strata's HTTP edge: the OCI Distribution API v1.1, health
// and metrics endpoints. It parses and validates what clients send (with
// api/oci), turns requests into metadata commands and blob pipeline calls,
// and maps domain errors to OCI error codes in one table (errors.go). It
// holds no state of its own: any request may go to any frontend.
package api
