module github.com/strata-registry/strata

go 1.26.0

replace github.com/hashicorp/go-metrics => github.com/hashicorp/go-metrics v0.6.1

require google.golang.org/protobuf v1.36.12
