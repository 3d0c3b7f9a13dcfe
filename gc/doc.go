// Package gc is Strata's garbage collection and retention.
//
// The collector reclaims what nothing references any more, and lifecycle
// policies expire images. The policy logic itself is pure: Amazon ECR compatible
// lifecycle policies (lifecycle.go: ParsePolicy, Evaluate) and tag mutability
// settings (immutability.go: ParseMutability, Mutability.Immutable) are
// deterministic and free of I/O and clocks. Callers pass a repository's
// images and the current time and get back what a policy expires, or whether
// a tag may move.
//
// The policy semantics follow ECR's documentation ("Lifecycle policy
// properties", "Examples of lifecycle policies", the lifecycle policy
// evaluation rules, and the PutImageTagMutability API reference). Where
// Strata departs from it, or the documentation is silent, the declaration
// says so.
package gc
