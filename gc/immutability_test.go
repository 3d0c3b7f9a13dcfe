package gc

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func wildcards(filters ...string) []Filter {
	var out []Filter
	for _, f := range filters {
		out = append(out, Filter{FilterType: FilterTypeWildcard, Filter: f})
	}
	return out
}

func TestMutabilityImmutable(t *testing.T) {
	tags := []string{"latest", "latest-1", "v1.0.0", "v1.0.0-rc1", "dev-42", "dev-", "mydev-1", "release", "1.2", "sha-abc"}
	tests := []struct {
		name      string
		mode      string
		filters   []string
		immutable []string // of tags; the others are mutable
	}{
		{"MUTABLE", ModeMutable, nil, nil},
		{"omitted means MUTABLE", "", nil, nil},
		{"IMMUTABLE", ModeImmutable, nil, tags},
		{
			// The filters name the tags that stay mutable. Without a
			// wildcard a filter is an exact tag.
			"IMMUTABLE_WITH_EXCLUSION, exact", ModeImmutableWithExclusion, []string{"latest"},
			[]string{"latest-1", "v1.0.0", "v1.0.0-rc1", "dev-42", "dev-", "mydev-1", "release", "1.2", "sha-abc"},
		},
		{
			"IMMUTABLE_WITH_EXCLUSION, prefix and exact", ModeImmutableWithExclusion, []string{"dev-*", "latest"},
			[]string{"latest-1", "v1.0.0", "v1.0.0-rc1", "mydev-1", "release", "1.2", "sha-abc"},
		},
		{
			"IMMUTABLE_WITH_EXCLUSION, suffix", ModeImmutableWithExclusion, []string{"*-rc1"},
			[]string{"latest", "latest-1", "v1.0.0", "dev-42", "dev-", "mydev-1", "release", "1.2", "sha-abc"},
		},
		{
			"IMMUTABLE_WITH_EXCLUSION, two wildcards", ModeImmutableWithExclusion, []string{"*dev*"},
			[]string{"latest", "latest-1", "v1.0.0", "v1.0.0-rc1", "release", "1.2", "sha-abc"},
		},
		{
			"IMMUTABLE_WITH_EXCLUSION, infix", ModeImmutableWithExclusion, []string{"v*.0"},
			[]string{"latest", "latest-1", "v1.0.0-rc1", "dev-42", "dev-", "mydev-1", "release", "1.2", "sha-abc"},
		},
		{"IMMUTABLE_WITH_EXCLUSION, everything excluded", ModeImmutableWithExclusion, []string{"*"}, nil},
		{
			// The filters name the tags that are immutable.
			"MUTABLE_WITH_EXCLUSION, prefix", ModeMutableWithExclusion, []string{"v*"},
			[]string{"v1.0.0", "v1.0.0-rc1"},
		},
		{
			"MUTABLE_WITH_EXCLUSION, five filters", ModeMutableWithExclusion, []string{"release", "1.2", "sha-*", "*-rc1", "latest"},
			[]string{"release", "1.2", "sha-abc", "v1.0.0-rc1", "latest"},
		},
		{"MUTABLE_WITH_EXCLUSION, matches nothing", ModeMutableWithExclusion, []string{"nothing"}, nil},
		{"MUTABLE_WITH_EXCLUSION, is case-sensitive", ModeMutableWithExclusion, []string{"LATEST"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMutability(tt.mode, wildcards(tt.filters...))
			if err != nil {
				t.Fatal(err)
			}
			for _, tag := range tags {
				want := false
				for _, im := range tt.immutable {
					want = want || im == tag
				}
				if got := m.Immutable(tag); got != want {
					t.Errorf("Immutable(%q) = %v, want %v", tag, got, want)
				}
			}
			if !reflect.DeepEqual(m.Filters(), wildcards(tt.filters...)) {
				t.Errorf("Filters() = %v", m.Filters())
			}
			// The filters round-trip.
			m2, err := ParseMutability(m.Mode, m.Filters())
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Errorf("round trip: %+v, %v", m2, err)
			}
		})
	}
}

func TestMutabilityNormalizes(t *testing.T) {
	m, err := ParseMutability("", nil)
	if err != nil || m.Mode != ModeMutable || m.Exclusions != nil {
		t.Fatalf("got %+v, %v", m, err)
	}
	if (Mutability{}).Immutable("latest") {
		t.Fatal("the zero Mutability is not MUTABLE")
	}
	// Duplicate filters are kept as given (ECR documents no rule against
	// them).
	m, err = ParseMutability(ModeImmutableWithExclusion, wildcards("latest", "latest"))
	if err != nil || len(m.Exclusions) != 2 {
		t.Fatalf("got %+v, %v", m, err)
	}
	// The result does not alias the caller's slice.
	fs := wildcards("a*")
	m, _ = ParseMutability(ModeMutableWithExclusion, fs)
	fs[0].Filter = "b*"
	if m.Exclusions[0] != "a*" {
		t.Fatal("Exclusions alias the filters")
	}
}

func TestParseMutabilityRefusals(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		filters []Filter
		path    string
		msg     string
	}{
		{"unknown mode", "READ_ONLY", nil, "imageTagMutability", `not "READ_ONLY"`},
		{"mode is case-sensitive", "immutable", nil, "imageTagMutability", `not "immutable"`},
		{"filters with MUTABLE", ModeMutable, wildcards("latest"), "imageTagMutabilityExclusionFilters", "only allowed with"},
		{"filters with IMMUTABLE", ModeImmutable, wildcards("latest"), "imageTagMutabilityExclusionFilters", "only allowed with"},
		{"filters with the default mode", "", wildcards("latest"), "imageTagMutabilityExclusionFilters", "not MUTABLE"},
		{"no filters with IMMUTABLE_WITH_EXCLUSION", ModeImmutableWithExclusion, nil, "imageTagMutabilityExclusionFilters", "needs 1 to 5 filters, not 0"},
		{"no filters with MUTABLE_WITH_EXCLUSION", ModeMutableWithExclusion, []Filter{}, "imageTagMutabilityExclusionFilters", "needs 1 to 5 filters, not 0"},
		{"six filters", ModeImmutableWithExclusion, wildcards("a", "b", "c", "d", "e", "f"), "imageTagMutabilityExclusionFilters", "not 6"},
		{"filter type missing", ModeImmutableWithExclusion, []Filter{{Filter: "latest"}}, "imageTagMutabilityExclusionFilters[0].filterType", `must be "WILDCARD", not ""`},
		{"filter type REGEX", ModeImmutableWithExclusion, []Filter{{FilterType: "REGEX", Filter: "latest"}}, "imageTagMutabilityExclusionFilters[0].filterType", `not "REGEX"`},
		{"filter type is case-sensitive", ModeImmutableWithExclusion, append(wildcards("a"), Filter{FilterType: "wildcard", Filter: "b"}), "imageTagMutabilityExclusionFilters[1].filterType", `not "wildcard"`},
		{"empty filter", ModeImmutableWithExclusion, wildcards("latest", ""), "imageTagMutabilityExclusionFilters[1].filter", "must not be empty"},
		{"filter too long", ModeImmutableWithExclusion, wildcards(strings.Repeat("a", 129)), "imageTagMutabilityExclusionFilters[0].filter", "129 characters long, more than the limit of 128"},
		{"slash", ModeImmutableWithExclusion, wildcards("dev/x"), "imageTagMutabilityExclusionFilters[0].filter", "only letters, digits and . _ * -"},
		{"space", ModeImmutableWithExclusion, wildcards("git hash"), "imageTagMutabilityExclusionFilters[0].filter", "only letters"},
		{"question mark", ModeImmutableWithExclusion, wildcards("v?"), "imageTagMutabilityExclusionFilters[0].filter", "only letters"},
		{"non-ASCII", ModeImmutableWithExclusion, wildcards("dév"), "imageTagMutabilityExclusionFilters[0].filter", "only letters"},
		{"three wildcards", ModeMutableWithExclusion, wildcards("ok*", "*a*b*"), "imageTagMutabilityExclusionFilters[1].filter", "3 wildcards (*), more than the limit of 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMutability(tt.mode, tt.filters)
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			var fe *FieldError
			if !errors.Is(err, ErrMutabilityInvalid) || !errors.As(err, &fe) || errors.Is(err, ErrPolicyInvalid) {
				t.Fatalf("error %v has the wrong type", err)
			}
			if fe.Path != tt.path || !strings.Contains(fe.Msg, tt.msg) {
				t.Fatalf("got path %q msg %q, want path %q msg containing %q", fe.Path, fe.Msg, tt.path, tt.msg)
			}
			if !strings.HasPrefix(err.Error(), "gc: invalid image tag mutability: "+tt.path+": ") {
				t.Fatalf("message %q", err)
			}
		})
	}
}

func TestParseMutabilityLimits(t *testing.T) {
	for name, filters := range map[string][]Filter{
		"five filters":            wildcards("a", "b", "c", "d", "e"),
		"128 characters":          wildcards(strings.Repeat("x", 128)),
		"two wildcards":           wildcards("*-rc*"),
		"every allowed character": wildcards("azAZ09._-*"),
		"a lone wildcard":         wildcards("*"),
	} {
		t.Run(name, func(t *testing.T) {
			for _, mode := range []string{ModeMutableWithExclusion, ModeImmutableWithExclusion} {
				if _, err := ParseMutability(mode, filters); err != nil {
					t.Fatalf("%s: %v", mode, err)
				}
			}
		})
	}
}
