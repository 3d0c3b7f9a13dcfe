package gc

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrPolicyInvalid is wrapped by every error ParsePolicy and Policy.Validate
// return; the concrete error is a *FieldError naming the offending field.
var ErrPolicyInvalid = errors.New("gc: invalid lifecycle policy")

// FieldError says which field of a document is invalid and why. Err is the
// sentinel it wraps (ErrPolicyInvalid or ErrMutabilityInvalid).
type FieldError struct {
	Err  error
	Path string // JSON path, e.g. "rules[2].selection.tagPatternList[0]"; "" for the whole document
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Err.Error() + ": " + e.Msg
	}
	return e.Err.Error() + ": " + e.Path + ": " + e.Msg
}

func (e *FieldError) Unwrap() error { return e.Err }

func invalidPolicy(path, format string, args ...any) error {
	return &FieldError{Err: ErrPolicyInvalid, Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Values of the lifecycle policy fields.
const (
	TagStatusTagged   = "tagged"
	TagStatusUntagged = "untagged"
	TagStatusAny      = "any"

	CountTypeImageCountMoreThan = "imageCountMoreThan"
	CountTypeSinceImagePushed   = "sinceImagePushed"
	CountTypeSinceImagePulled   = "sinceImagePulled"

	CountUnitDays        = "days"
	StorageClassStandard = "standard"
	ActionExpire         = "expire"
)

// ECR's limits, and the ones Strata adds.
const (
	// MaxPolicyLength is ECR's quota on the length of a lifecycle policy
	// text, counted here in Unicode code points.
	MaxPolicyLength = 30720
	// MaxRules is ECR's quota on the rules of a lifecycle policy.
	MaxRules = 50
	// MaxPatternWildcards is ECR's limit of '*' in one tagPatternList entry.
	MaxPatternWildcards = 4
	// MaxCount bounds rulePriority and countNumber. ECR documents them as
	// "integer" (a 32-bit Java int); Strata refuses larger values rather than
	// interpreting them differently from ECR.
	MaxCount = math.MaxInt32
)

// Policy is a lifecycle policy: ECR's JSON document, rules in document order.
// Marshaling a Policy with encoding/json gives that document back.
type Policy struct {
	Rules []Rule `json:"rules"`
}

// Rule is one rule of a lifecycle policy.
type Rule struct {
	RulePriority int       `json:"rulePriority"`
	Description  string    `json:"description,omitempty"`
	Selection    Selection `json:"selection"`
	Action       Action    `json:"action"`
}

// Selection says which images a rule looks at and which of them it expires.
// A nil list is an omitted one.
type Selection struct {
	TagStatus      string   `json:"tagStatus"`
	TagPatternList []string `json:"tagPatternList,omitempty"`
	TagPrefixList  []string `json:"tagPrefixList,omitempty"`
	// StorageClass is "" (omitted) or "standard", the only class Strata has.
	StorageClass string `json:"storageClass,omitempty"`
	CountType    string `json:"countType"`
	CountUnit    string `json:"countUnit,omitempty"`
	CountNumber  int    `json:"countNumber"`
}

// Action is what a rule does to the images it selects: "expire".
type Action struct {
	Type string `json:"type"`
}

// Image is what a lifecycle policy looks at in one image (manifest) of a
// repository. Digests are expected to be unique.
type Image struct {
	Digest string
	Tags   []string
	// PushedAt must be set: an image with a zero PushedAt is as old as can
	// be.
	PushedAt time.Time
	// LastPulledAt is the zero time if the image was never pulled. A value
	// before PushedAt counts as PushedAt, so time.Unix(0, 0) for "never" is
	// harmless.
	LastPulledAt time.Time
}

// Expiration is an image a policy expires, with the rule that expires it.
type Expiration struct {
	Image        Image
	RulePriority int
	Description  string
}

// ---- parsing ----

// ParsePolicy parses and validates a lifecycle policy text with ECR's rules
// (see Validate). Unknown and duplicated fields are refused, field names are
// case-sensitive, and numbers must be integers. Every error wraps
// ErrPolicyInvalid and is a *FieldError naming the field.
func ParsePolicy(text []byte) (*Policy, error) {
	return parsePolicy(text, true)
}

func parsePolicy(text []byte, checkLength bool) (*Policy, error) {
	if checkLength {
		if n := utf8.RuneCount(text); n > MaxPolicyLength {
			return nil, invalidPolicy("", "the policy text has %d characters, more than the limit of %d", n, MaxPolicyLength)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	var doc json.RawMessage
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, invalidPolicy("", "the policy text is empty")
		}
		return nil, invalidPolicy("", "not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalidPolicy("", "unexpected data after the policy document")
	}
	top, err := decodeObject(doc, "")
	if err != nil {
		return nil, err
	}
	if err := top.onlyKnown("", "rules"); err != nil {
		return nil, err
	}
	raw, ok := top.fields["rules"]
	if !ok {
		return nil, invalidPolicy("rules", "is required")
	}
	if kind := jsonKind(raw); kind != "an array" {
		return nil, invalidPolicy("rules", "must be an array, not %s", kind)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, invalidPolicy("rules", "%v", err)
	}
	if len(elems) > MaxRules {
		return nil, invalidPolicy("rules", "has %d rules, more than the limit of %d", len(elems), MaxRules)
	}
	p := &Policy{Rules: make([]Rule, 0, len(elems))}
	for i, e := range elems {
		r, err := decodeRule(e, fmt.Sprintf("rules[%d]", i))
		if err != nil {
			return nil, err
		}
		p.Rules = append(p.Rules, r)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func decodeRule(raw json.RawMessage, path string) (Rule, error) {
	var r Rule
	o, err := decodeObject(raw, path)
	if err != nil {
		return r, err
	}
	if err := o.onlyKnown(path, "rulePriority", "description", "selection", "action"); err != nil {
		return r, err
	}
	v, err := o.required(path, "rulePriority")
	if err != nil {
		return r, err
	}
	if r.RulePriority, err = decodeInt(v, path+".rulePriority"); err != nil {
		return r, err
	}
	if v, ok := o.fields["description"]; ok {
		if r.Description, err = decodeString(v, path+".description"); err != nil {
			return r, err
		}
	}
	if v, err = o.required(path, "selection"); err != nil {
		return r, err
	}
	if r.Selection, err = decodeSelection(v, path+".selection"); err != nil {
		return r, err
	}
	if v, err = o.required(path, "action"); err != nil {
		return r, err
	}
	if r.Action, err = decodeAction(v, path+".action"); err != nil {
		return r, err
	}
	return r, nil
}

func decodeSelection(raw json.RawMessage, path string) (Selection, error) {
	var s Selection
	o, err := decodeObject(raw, path)
	if err != nil {
		return s, err
	}
	if err := o.onlyKnown(path, "tagStatus", "tagPatternList", "tagPrefixList", "storageClass",
		"countType", "countUnit", "countNumber"); err != nil {
		return s, err
	}
	v, err := o.required(path, "tagStatus")
	if err != nil {
		return s, err
	}
	if s.TagStatus, err = decodeString(v, path+".tagStatus"); err != nil {
		return s, err
	}
	if v, ok := o.fields["tagPatternList"]; ok {
		if s.TagPatternList, err = decodeStringList(v, path+".tagPatternList"); err != nil {
			return s, err
		}
	}
	if v, ok := o.fields["tagPrefixList"]; ok {
		if s.TagPrefixList, err = decodeStringList(v, path+".tagPrefixList"); err != nil {
			return s, err
		}
	}
	// For these two an empty string would read as "omitted"; refuse it so
	// that what is accepted is what was written.
	for _, f := range []struct {
		name string
		dst  *string
	}{{"storageClass", &s.StorageClass}, {"countUnit", &s.CountUnit}} {
		if v, ok := o.fields[f.name]; ok {
			if *f.dst, err = decodeString(v, path+"."+f.name); err != nil {
				return s, err
			}
			if *f.dst == "" {
				return s, invalidPolicy(path+"."+f.name, "must not be empty")
			}
		}
	}
	if v, err = o.required(path, "countType"); err != nil {
		return s, err
	}
	if s.CountType, err = decodeString(v, path+".countType"); err != nil {
		return s, err
	}
	if v, err = o.required(path, "countNumber"); err != nil {
		return s, err
	}
	if s.CountNumber, err = decodeInt(v, path+".countNumber"); err != nil {
		return s, err
	}
	return s, nil
}

func decodeAction(raw json.RawMessage, path string) (Action, error) {
	var a Action
	o, err := decodeObject(raw, path)
	if err != nil {
		return a, err
	}
	if _, ok := o.fields["targetStorageClass"]; ok {
		return a, invalidPolicy(path+".targetStorageClass", "not supported: Strata has no archive storage class")
	}
	if err := o.onlyKnown(path, "type"); err != nil {
		return a, err
	}
	v, err := o.required(path, "type")
	if err != nil {
		return a, err
	}
	a.Type, err = decodeString(v, path+".type")
	return a, err
}

// object is a decoded JSON object: its members in document order.
type object struct {
	keys   []string
	fields map[string]json.RawMessage
}

func decodeObject(raw json.RawMessage, path string) (*object, error) {
	if kind := jsonKind(raw); kind != "an object" {
		if path == "" {
			return nil, invalidPolicy("", "the policy must be a JSON object, not %s", kind)
		}
		return nil, invalidPolicy(path, "must be an object, not %s", kind)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, invalidPolicy(path, "%v", err)
	}
	o := &object{fields: map[string]json.RawMessage{}}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, invalidPolicy(path, "%v", err)
		}
		key, _ := t.(string)
		if _, dup := o.fields[key]; dup {
			return nil, invalidPolicy(join(path, key), "appears more than once")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, invalidPolicy(join(path, key), "%v", err)
		}
		o.keys = append(o.keys, key)
		o.fields[key] = v
	}
	return o, nil
}

// onlyKnown refuses the first member (in document order) not named in known.
func (o *object) onlyKnown(path string, known ...string) error {
	for _, k := range o.keys {
		if !slices.Contains(known, k) {
			return invalidPolicy(join(path, k), "unknown field")
		}
	}
	return nil
}

func (o *object) required(path, name string) (json.RawMessage, error) {
	v, ok := o.fields[name]
	if !ok {
		return nil, invalidPolicy(join(path, name), "is required")
	}
	return v, nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonKind names the kind of a JSON value for error messages.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func decodeString(raw json.RawMessage, path string) (string, error) {
	if kind := jsonKind(raw); kind != "a string" {
		return "", invalidPolicy(path, "must be a string, not %s", kind)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalidPolicy(path, "%v", err)
	}
	return s, nil
}

func decodeInt(raw json.RawMessage, path string) (int, error) {
	raw = bytes.TrimSpace(raw)
	if kind := jsonKind(raw); kind != "a number" {
		return 0, invalidPolicy(path, "must be an integer, not %s", kind)
	}
	if bytes.ContainsAny(raw, ".eE") {
		return 0, invalidPolicy(path, "must be an integer, not %s", raw)
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < math.MinInt32 || n > math.MaxInt32 {
		return 0, invalidPolicy(path, "must be between 1 and %d, not %s", MaxCount, raw)
	}
	return int(n), nil
}

func decodeStringList(raw json.RawMessage, path string) ([]string, error) {
	if kind := jsonKind(raw); kind != "an array" {
		return nil, invalidPolicy(path, "must be an array of strings, not %s", kind)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, invalidPolicy(path, "%v", err)
	}
	out := make([]string, 0, len(elems)) // non-nil: present, even if empty
	for i, e := range elems {
		s, err := decodeString(e, fmt.Sprintf("%s[%d]", path, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// ---- validation ----

// Validate checks a policy against ECR's rules:
//
//   - at least one rule, at most MaxRules;
//   - rulePriority: unique, 1..MaxCount; a rule with tagStatus "any" must
//     have the highest rulePriority (so there is at most one);
//   - tagStatus: "tagged", "untagged" or "any"; "tagged" takes exactly one of
//     tagPrefixList and tagPatternList, non-empty; "untagged" and "any" take
//     neither; at most one rule selects untagged images;
//   - tagPatternList entries: non-empty, at most MaxPatternWildcards '*';
//   - no two rules have the same set of prefixes (or of patterns);
//   - storageClass: omitted or "standard";
//   - countType: "imageCountMoreThan", "sinceImagePushed" or
//     "sinceImagePulled"; countUnit "days" is required with the last two and
//     refused with the first; countNumber 1..MaxCount;
//   - action.type: "expire".
//
// Where Strata departs from ECR:
//
//   - ECR accepts sinceImagePulled only with the "transition" action (to its
//     archive storage class, deleting later with sinceImageTransitioned).
//     Strata has no archive class, so it accepts sinceImagePulled with
//     "expire" and refuses "transition", storageClass "archive",
//     targetStorageClass and sinceImageTransitioned.
//   - tagPrefixList entries must be non-empty and must not contain '*':
//     prefixes are literal, and a '*' in one (meant as a wildcard) would
//     silently match nothing, so the rule would stop protecting its images
//     from lower-priority rules.
func (p *Policy) Validate() error {
	if p == nil || len(p.Rules) == 0 {
		return invalidPolicy("rules", "at least one rule is required")
	}
	if len(p.Rules) > MaxRules {
		return invalidPolicy("rules", "has %d rules, more than the limit of %d", len(p.Rules), MaxRules)
	}
	for i, r := range p.Rules {
		if err := r.validate(fmt.Sprintf("rules[%d]", i)); err != nil {
			return err
		}
	}
	byPriority := map[int]int{}
	highest := 0
	untagged := -1
	lists := map[string]int{}
	for i, r := range p.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		if j, dup := byPriority[r.RulePriority]; dup {
			return invalidPolicy(path+".rulePriority", "%d is also the rulePriority of rules[%d]; priorities must be unique", r.RulePriority, j)
		}
		byPriority[r.RulePriority] = i
		highest = max(highest, r.RulePriority)
		switch r.Selection.TagStatus {
		case TagStatusUntagged:
			if untagged >= 0 {
				return invalidPolicy(path+".selection.tagStatus", "only one rule may select untagged images, and rules[%d] does", untagged)
			}
			untagged = i
		case TagStatusTagged:
			name, list := "tagPrefixList", r.Selection.TagPrefixList
			if r.Selection.TagPatternList != nil {
				name, list = "tagPatternList", r.Selection.TagPatternList
			}
			set := slices.Clone(list)
			slices.Sort(set)
			key := fmt.Sprintf("%s%q", name, slices.Compact(set))
			if j, dup := lists[key]; dup {
				return invalidPolicy(path+".selection."+name, "selects the same tags as rules[%d]; every rule needs its own set", j)
			}
			lists[key] = i
		}
	}
	for i, r := range p.Rules {
		if r.Selection.TagStatus == TagStatusAny && r.RulePriority != highest {
			return invalidPolicy(fmt.Sprintf("rules[%d].selection.tagStatus", i),
				`a rule with tagStatus "any" must have the highest rulePriority, but %d is not (rules[%d] has %d)`,
				r.RulePriority, byPriority[highest], highest)
		}
	}
	return nil
}

func (r *Rule) validate(path string) error {
	if r.RulePriority < 1 || r.RulePriority > MaxCount {
		return invalidPolicy(path+".rulePriority", "must be between 1 and %d, not %d", MaxCount, r.RulePriority)
	}
	s := &r.Selection
	sp := path + ".selection"
	switch s.TagStatus {
	case TagStatusTagged:
		switch {
		case s.TagPrefixList != nil && s.TagPatternList != nil:
			return invalidPolicy(sp, "specify either tagPrefixList or tagPatternList, not both")
		case s.TagPrefixList == nil && s.TagPatternList == nil:
			return invalidPolicy(sp, `tagStatus "tagged" needs a tagPrefixList or a tagPatternList`)
		case s.TagPrefixList != nil:
			if len(s.TagPrefixList) == 0 {
				return invalidPolicy(sp+".tagPrefixList", "must not be empty")
			}
			for i, e := range s.TagPrefixList {
				if e == "" {
					return invalidPolicy(fmt.Sprintf("%s.tagPrefixList[%d]", sp, i), "must not be empty")
				}
				if strings.Contains(e, "*") {
					return invalidPolicy(fmt.Sprintf("%s.tagPrefixList[%d]", sp, i),
						"prefixes are literal and %q contains '*'; use tagPatternList for wildcards", e)
				}
			}
		default:
			if len(s.TagPatternList) == 0 {
				return invalidPolicy(sp+".tagPatternList", "must not be empty")
			}
			for i, e := range s.TagPatternList {
				if e == "" {
					return invalidPolicy(fmt.Sprintf("%s.tagPatternList[%d]", sp, i), "must not be empty")
				}
				if n := strings.Count(e, "*"); n > MaxPatternWildcards {
					return invalidPolicy(fmt.Sprintf("%s.tagPatternList[%d]", sp, i),
						"%q has %d wildcards (*), more than the limit of %d", e, n, MaxPatternWildcards)
				}
			}
		}
	case TagStatusUntagged, TagStatusAny:
		if s.TagPrefixList != nil {
			return invalidPolicy(sp+".tagPrefixList", "must be omitted when tagStatus is %q", s.TagStatus)
		}
		if s.TagPatternList != nil {
			return invalidPolicy(sp+".tagPatternList", "must be omitted when tagStatus is %q", s.TagStatus)
		}
	default:
		return invalidPolicy(sp+".tagStatus", `must be "tagged", "untagged" or "any", not %q`, s.TagStatus)
	}
	switch s.StorageClass {
	case "", StorageClassStandard:
	case "archive":
		return invalidPolicy(sp+".storageClass", "not supported: Strata has no archive storage class")
	default:
		return invalidPolicy(sp+".storageClass", `must be "standard", not %q`, s.StorageClass)
	}
	switch s.CountType {
	case CountTypeImageCountMoreThan:
		if s.CountUnit != "" {
			return invalidPolicy(sp+".countUnit", "must be omitted when countType is %q", s.CountType)
		}
	case CountTypeSinceImagePushed, CountTypeSinceImagePulled:
		if s.CountUnit == "" {
			return invalidPolicy(sp+".countUnit", "is required when countType is %q", s.CountType)
		}
		if s.CountUnit != CountUnitDays {
			return invalidPolicy(sp+".countUnit", `must be "days", not %q`, s.CountUnit)
		}
	case "sinceImageTransitioned":
		return invalidPolicy(sp+".countType", "not supported: Strata has no archive storage class")
	default:
		return invalidPolicy(sp+".countType", `must be "imageCountMoreThan", "sinceImagePushed" or "sinceImagePulled", not %q`, s.CountType)
	}
	if s.CountNumber < 1 || s.CountNumber > MaxCount {
		return invalidPolicy(sp+".countNumber", "must be between 1 and %d, not %d", MaxCount, s.CountNumber)
	}
	switch r.Action.Type {
	case ActionExpire:
	case "transition":
		return invalidPolicy(path+".action.type", "not supported: Strata has no archive storage class")
	default:
		return invalidPolicy(path+".action.type", `must be "expire", not %q`, r.Action.Type)
	}
	return nil
}

// ---- evaluation ----

// Evaluate returns the images p expires at time now, oldest push first (ties
// broken by digest). It follows ECR's evaluation rules:
//
//   - Rules apply in rulePriority order, lowest first, and an image is
//     expired by at most one rule.
//   - A rule selects images by tags: "any" selects every image, "untagged"
//     the images without tags, "tagged" the images that, for every entry of
//     its list, have some tag starting with that prefix (tagPrefixList) or
//     matching that pattern (tagPatternList: '*' matches any run of
//     characters, everything else itself, over the whole tag).
//   - An image selected by a rule can't be expired by any lower-priority
//     rule, whether or not the rule expired it. Lower-priority rules still
//     see it ("identify it as if it hadn't been expired"): it counts among
//     the images an imageCountMoreThan rule keeps. (ECR's "all images"
//     example B: the "any" rule keeps image E, which a higher rule selected,
//     and so expires image D.)
//   - imageCountMoreThan N: of the selected images, newest push first, all
//     but the first N are expired.
//   - sinceImagePushed N days: selected images pushed more than N×24h before
//     now are expired.
//   - sinceImagePulled N days: the same with the last pull time, or the push
//     time for an image never pulled (Strata uses the later of the two).
//
// Evaluate expires nothing if p is invalid (see Validate).
func Evaluate(p *Policy, images []Image, now time.Time) []Expiration {
	if len(images) == 0 || p.Validate() != nil {
		return nil
	}
	rules := slices.Clone(p.Rules)
	slices.SortFunc(rules, func(a, b Rule) int { return cmp.Compare(a.RulePriority, b.RulePriority) })

	// Image indices oldest first; imageCountMoreThan keeps the tail.
	order := make([]int, len(images))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := images[a].PushedAt.Compare(images[b].PushedAt); c != 0 {
			return c
		}
		if c := strings.Compare(images[a].Digest, images[b].Digest); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})

	now = now.UTC()
	seen := make([]bool, len(images))     // selected by a higher-priority rule
	expiredBy := make([]int, len(images)) // index in rules + 1; 0: kept
	var selected []int
	for ri := range rules {
		s := &rules[ri].Selection
		selected = selected[:0]
		for _, i := range order {
			if s.selects(&images[i]) {
				selected = append(selected, i)
			}
		}
		mark := func(i int) {
			if !seen[i] {
				expiredBy[i] = ri + 1
			}
		}
		switch s.CountType {
		case CountTypeImageCountMoreThan:
			for _, i := range selected[:max(0, len(selected)-s.CountNumber)] {
				mark(i)
			}
		case CountTypeSinceImagePushed, CountTypeSinceImagePulled:
			cutoff := now.AddDate(0, 0, -s.CountNumber) // exact N×24h in UTC
			for _, i := range selected {
				t := images[i].PushedAt
				if s.CountType == CountTypeSinceImagePulled && images[i].LastPulledAt.After(t) {
					t = images[i].LastPulledAt
				}
				if t.Before(cutoff) {
					mark(i)
				}
			}
		}
		for _, i := range selected {
			seen[i] = true
		}
	}

	var out []Expiration
	for _, i := range order {
		if expiredBy[i] == 0 {
			continue
		}
		r := &rules[expiredBy[i]-1]
		img := images[i]
		img.Tags = slices.Clone(img.Tags)
		out = append(out, Expiration{Image: img, RulePriority: r.RulePriority, Description: r.Description})
	}
	return out
}

// selects reports whether the selection's tag requirements match img.
func (s *Selection) selects(img *Image) bool {
	switch s.TagStatus {
	case TagStatusAny:
		return true
	case TagStatusUntagged:
		return len(img.Tags) == 0
	case TagStatusTagged:
		match := func(prefix, tag string) bool { return strings.HasPrefix(tag, prefix) }
		list := s.TagPrefixList
		if s.TagPatternList != nil {
			match, list = wildcardMatch, s.TagPatternList
		}
		if len(list) == 0 {
			return false
		}
		for _, e := range list {
			if !slices.ContainsFunc(img.Tags, func(tag string) bool { return match(e, tag) }) {
				return false
			}
		}
		return true
	}
	return false
}

// wildcardMatch reports whether s matches pattern as a whole, where '*'
// matches any run of bytes (including none) and any other byte itself.
// Backtracks only to the last '*': O(len(pattern)·len(s)) at worst.
func wildcardMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			mark++
			p, i = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
