package gc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrMutabilityInvalid is wrapped by every error ParseMutability returns; the
// concrete error is a *FieldError naming the offending field.
var ErrMutabilityInvalid = errors.New("gc: invalid image tag mutability")

// ECR's imageTagMutability values.
const (
	// ModeMutable: every tag may move. The default when the setting is
	// omitted.
	ModeMutable = "MUTABLE"
	// ModeImmutable: no tag may move.
	ModeImmutable = "IMMUTABLE"
	// ModeMutableWithExclusion: tags may move, except those matching an
	// exclusion filter.
	ModeMutableWithExclusion = "MUTABLE_WITH_EXCLUSION"
	// ModeImmutableWithExclusion: tags may not move, except those matching
	// an exclusion filter.
	ModeImmutableWithExclusion = "IMMUTABLE_WITH_EXCLUSION"

	// FilterTypeWildcard is the only filterType ECR defines.
	FilterTypeWildcard = "WILDCARD"
)

// ECR's limits on imageTagMutabilityExclusionFilters.
const (
	MinExclusionFilters         = 1 // with a *_WITH_EXCLUSION mode
	MaxExclusionFilters         = 5
	MaxExclusionFilterLength    = 128
	MaxExclusionFilterWildcards = 2
)

// Filter is one of ECR's imageTagMutabilityExclusionFilters.
type Filter struct {
	FilterType string `json:"filterType"`
	Filter     string `json:"filter"`
}

// Mutability is a repository's validated tag mutability setting. The zero
// value is MUTABLE.
type Mutability struct {
	Mode       string   // one of the Mode constants
	Exclusions []string // the filters; only with the *_WITH_EXCLUSION modes
}

func invalidMutability(path, format string, args ...any) error {
	return &FieldError{Err: ErrMutabilityInvalid, Path: path, Msg: fmt.Sprintf(format, args...)}
}

// ParseMutability validates ECR's imageTagMutability and
// imageTagMutabilityExclusionFilters:
//
//   - mode is one of the Mode constants (case-sensitive); "" means MUTABLE,
//     ECR's default when the setting is omitted;
//   - MUTABLE and IMMUTABLE take no filters; the *_WITH_EXCLUSION modes take
//     1 to 5;
//   - filterType is "WILDCARD";
//   - filter is 1 to 128 characters of [0-9A-Za-z._*-] with at most 2 '*'.
//
// A filter matches a tag as a whole, '*' matching any run of characters
// (including none): "latest" matches only "latest", "dev-*" matches "dev-"
// and "dev-42". Every error wraps ErrMutabilityInvalid and is a *FieldError.
func ParseMutability(mode string, filters []Filter) (Mutability, error) {
	const fp = "imageTagMutabilityExclusionFilters"
	if mode == "" {
		mode = ModeMutable
	}
	switch mode {
	case ModeMutable, ModeImmutable:
		if len(filters) > 0 {
			return Mutability{}, invalidMutability(fp, "only allowed with imageTagMutability %s or %s, not %s",
				ModeMutableWithExclusion, ModeImmutableWithExclusion, mode)
		}
		return Mutability{Mode: mode}, nil
	case ModeMutableWithExclusion, ModeImmutableWithExclusion:
	default:
		return Mutability{}, invalidMutability("imageTagMutability", "must be %s, %s, %s or %s, not %q",
			ModeMutable, ModeImmutable, ModeMutableWithExclusion, ModeImmutableWithExclusion, mode)
	}
	if len(filters) < MinExclusionFilters || len(filters) > MaxExclusionFilters {
		return Mutability{}, invalidMutability(fp, "imageTagMutability %s needs %d to %d filters, not %d",
			mode, MinExclusionFilters, MaxExclusionFilters, len(filters))
	}
	m := Mutability{Mode: mode, Exclusions: make([]string, 0, len(filters))}
	for i, f := range filters {
		path := fmt.Sprintf("%s[%d]", fp, i)
		if f.FilterType != FilterTypeWildcard {
			return Mutability{}, invalidMutability(path+".filterType", "must be %q, not %q", FilterTypeWildcard, f.FilterType)
		}
		if err := checkExclusionFilter(f.Filter); err != nil {
			return Mutability{}, invalidMutability(path+".filter", "%s", err)
		}
		m.Exclusions = append(m.Exclusions, f.Filter)
	}
	return m, nil
}

func checkExclusionFilter(f string) error {
	if f == "" {
		return errors.New("must not be empty")
	}
	if len(f) > MaxExclusionFilterLength {
		return fmt.Errorf("is %d characters long, more than the limit of %d", len(f), MaxExclusionFilterLength)
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || strings.IndexByte("._*-", c) >= 0) {
			return fmt.Errorf("%q may contain only letters, digits and . _ * -", f)
		}
	}
	if n := strings.Count(f, "*"); n > MaxExclusionFilterWildcards {
		return fmt.Errorf("%q has %d wildcards (*), more than the limit of %d", f, n, MaxExclusionFilterWildcards)
	}
	return nil
}

// Immutable reports whether tag, once it exists in the repository, may not
// be moved to another image.
func (m Mutability) Immutable(tag string) bool {
	switch m.Mode {
	case ModeImmutable:
		return true
	case ModeImmutableWithExclusion:
		return !m.excluded(tag)
	case ModeMutableWithExclusion:
		return m.excluded(tag)
	}
	return false
}

func (m Mutability) excluded(tag string) bool {
	return slices.ContainsFunc(m.Exclusions, func(f string) bool { return wildcardMatch(f, tag) })
}

// Filters renders the exclusions as ECR's imageTagMutabilityExclusionFilters
// (nil when there are none).
func (m Mutability) Filters() []Filter {
	var out []Filter
	for _, e := range m.Exclusions {
		out = append(out, Filter{FilterType: FilterTypeWildcard, Filter: e})
	}
	return out
}
