package gc

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/strata-registry/strata/metastore"
)

const day = 24 * time.Hour

var now = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// img is an image named (and with digest) name, pushed age ago.
func img(name string, age time.Duration, tags ...string) Image {
	return Image{Digest: name, Tags: tags, PushedAt: now.Add(-age)}
}

// pulled returns im with its last pull at age ago.
func pulled(im Image, age time.Duration) Image {
	im.LastPulledAt = now.Add(-age)
	return im
}

// summary renders expirations as "digest@rulePriority", in order.
func summary(exp []Expiration) []string {
	out := []string{}
	for _, e := range exp {
		out = append(out, fmt.Sprintf("%s@%d", e.Image.Digest, e.RulePriority))
	}
	return out
}

// The repositories of ECR's "Filtering on multiple rules" and "Filtering on
// multiple tags in a single rule" examples.
var (
	multipleRulesRepo = []Image{
		img("A", 10*day, "beta-1", "prod-1"),
		img("B", 9*day, "beta-2", "prod-2"),
		img("C", 8*day, "beta-3"),
	}
	multipleTagsRepoA = []Image{
		img("A", 12*day, "alpha-1"),
		img("B", 11*day, "beta-1"),
		img("C", 10*day, "alpha-2", "beta-2"),
		img("D", 4*day, "alpha-3"),
		img("E", 3*day, "beta-3"),
		img("F", 2*day, "alpha-4", "beta-4"),
	}
	multipleTagsRepoB = []Image{
		img("A", 10*day, "alpha-1", "beta-1", "gamma-1"),
		img("B", 9*day, "alpha-2", "beta-2"),
		img("C", 8*day, "alpha-3", "beta-3", "gamma-2"),
	}
)

// TestEvaluateECRExamples reproduces every example of ECR's "Examples of
// lifecycle policies" page (the current tagPatternList versions and the
// earlier tagPrefixList versions), policy texts as published.
func TestEvaluateECRExamples(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		images []Image
		want   []string
	}{
		{
			// The page gives no repository for this one: prod* images older
			// than 14 days go, exactly 14 days is not older, other tags and
			// untagged images are not selected.
			name: "filtering on image age",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Expire images older than 14 days",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["prod*"],
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 14
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{
				img("A", 20*day, "prod-1"),
				img("B", 14*day, "prod-2"),
				img("C", 15*day, "production"),
				img("D", 30*day, "dev-1"),
				img("E", 30*day),
				img("F", 15*day, "latest", "prod-3"),
				img("G", 15*day, "preprod"),
			},
			want: []string{"A@1", "C@1", "F@1"},
		},
		{
			name: "filtering on image age (untagged, earlier version of the page)",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Expire images older than 14 days",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 14
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{img("A", 15*day), img("B", 13*day), img("C", 30*day, "v1")},
			want:   []string{"A@1"},
		},
		{
			name: "filtering on image count",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Keep only one untagged image, expire all others",
            "selection": {
                "tagStatus": "untagged",
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{img("A", 3*day), img("B", 2*day), img("C", 1*day), img("D", 5*day, "latest")},
			want:   []string{"A@1", "B@1"},
		},
		{
			// Rule 2 would mark A and B, but both were identified by rule 1.
			name: "filtering on multiple rules, example A",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["prod*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": { "type": "expire" }
        },
        {
            "rulePriority": 2,
            "description": "Rule 2",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["beta*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": { "type": "expire" }
        }
    ]
}`,
			images: multipleRulesRepo,
			want:   []string{"A@1"},
		},
		{
			name: "filtering on multiple rules, example A (tagPrefixList)",
			policy: `{"rules": [
  {"rulePriority": 1, "description": "Rule 1",
   "selection": {"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}},
  {"rulePriority": 2, "description": "Rule 2",
   "selection": {"tagStatus": "tagged", "tagPrefixList": ["beta"], "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}}]}`,
			images: multipleRulesRepo,
			want:   []string{"A@1"},
		},
		{
			// Rule 1 sees all three images; rule 2 sees none it may mark.
			name: "filtering on multiple rules, example B",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["beta*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        },
        {
            "rulePriority": 2,
            "description": "Rule 2",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["prod*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: multipleRulesRepo,
			want:   []string{"A@1", "B@1"},
		},
		{
			name: "filtering on multiple rules, example B (tagPrefixList, rules listed out of order)",
			policy: `{"rules": [
  {"rulePriority": 2, "description": "Rule 2",
   "selection": {"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}},
  {"rulePriority": 1, "description": "Rule 1",
   "selection": {"tagStatus": "tagged", "tagPrefixList": ["beta"], "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}}]}`,
			images: multipleRulesRepo,
			want:   []string{"A@1", "B@1"},
		},
		{
			// Only C and F carry both; C is older than five days.
			name: "filtering on multiple tags in a single rule, example A",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["alpha*", "beta*"],
                "countType": "sinceImagePushed",
                "countNumber": 5,
                "countUnit": "days"
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: multipleTagsRepoA,
			want:   []string{"C@1"},
		},
		{
			name: "filtering on multiple tags in a single rule, example A (tagPrefixList)",
			policy: `{"rules": [{"rulePriority": 1, "description": "Rule 1",
  "selection": {"tagStatus": "tagged", "tagPrefixList": ["alpha", "beta"], "countType": "sinceImagePushed", "countNumber": 5, "countUnit": "days"},
  "action": {"type": "expire"}}]}`,
			images: multipleTagsRepoA,
			want:   []string{"C@1"},
		},
		{
			// Tags are not exclusive: gamma-* does not stop A and C matching.
			name: "filtering on multiple tags in a single rule, example B",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["alpha*", "beta*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: multipleTagsRepoB,
			want:   []string{"A@1", "B@1"},
		},
		{
			name: "filtering on multiple tags in a single rule, example B (tagPrefixList)",
			policy: `{"rules": [{"rulePriority": 1, "description": "Rule 1",
  "selection": {"tagStatus": "tagged", "tagPrefixList": ["alpha", "beta"], "countType": "imageCountMoreThan", "countNumber": 1},
  "action": {"type": "expire"}}]}`,
			images: multipleTagsRepoB,
			want:   []string{"A@1", "B@1"},
		},
		{
			name: "filtering on all images, example A",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{
				img("A", 4*day, "alpha-1"),
				img("B", 3*day, "beta-1"),
				img("C", 2*day),
				img("D", 1*day, "alpha-2"),
			},
			want: []string{"A@1", "B@1", "C@1"},
		},
		{
			// Rule 1 marks A (and identifies C), rule 2 marks B (and
			// identifies E, exactly one day old so not older than one day),
			// rule 3 keeps the newest of A-E and may only mark D. D and E
			// were both "pushed 1 day ago"; equal push times are ordered by
			// digest, so E counts as the newer and is the one kept.
			name: "filtering on all images, example B",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Rule 1",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": ["alpha*"],
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        },
        {
            "rulePriority": 2,
            "description": "Rule 2",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        },
        {
            "rulePriority": 3,
            "description": "Rule 3",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": 1
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{
				img("A", 4*day, "alpha-1", "beta-1"),
				img("B", 3*day),
				img("C", 2*day, "alpha-2"),
				img("D", 1*day, "git hash"),
				img("E", 1*day),
			},
			want: []string{"A@1", "B@2", "D@3"},
		},
		{
			name: "filtering on all images, example B (tagPrefixList, earlier version of the page)",
			policy: `{"rules": [
  {"rulePriority": 1, "description": "Rule 1",
   "selection": {"tagStatus": "tagged", "tagPrefixList": ["alpha"], "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}},
  {"rulePriority": 2, "description": "Rule 2",
   "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1},
   "action": {"type": "expire"}},
  {"rulePriority": 3, "description": "Rule 3",
   "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
   "action": {"type": "expire"}}]}`,
			images: []Image{
				img("A", 4*day, "alpha-1", "beta-1"),
				img("B", 3*day),
				img("C", 2*day, "alpha-2"),
				img("D", 1*day, "git hash"),
				img("E", 1*day),
			},
			want: []string{"A@1", "B@2", "D@3"},
		},
		{
			// ECR's "Filtering on last pulled time" example with "expire"
			// for "transition" (Strata has no archive class; the verbatim
			// text is refused, see TestParsePolicyRefusals). The pull time
			// counts, or the push time for an image never pulled.
			name: "filtering on last pulled time (Strata: expire)",
			policy: `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Expire images not pulled in 90 days",
            "selection": {
                "tagStatus": "any",
                "countType": "sinceImagePulled",
                "countUnit": "days",
                "countNumber": 90
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`,
			images: []Image{
				pulled(img("A", 200*day, "v1"), 100*day),
				pulled(img("B", 200*day, "v2"), 10*day),
				img("C", 120*day),
				img("D", 30*day, "v4"),
				{Digest: "E", PushedAt: now.Add(-100 * day), LastPulledAt: time.Unix(0, 0)}, // "never", as Unix nanoseconds
				pulled(img("F", 95*day), 90*day),
				{Digest: "G", PushedAt: now.Add(-10 * day), LastPulledAt: now.Add(-100 * day)}, // pull before push: push counts
			},
			want: []string{"A@1", "C@1", "E@1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.policy))
			if err != nil {
				t.Fatalf("ParsePolicy: %v", err)
			}
			got := Evaluate(p, tt.images, now)
			if s := summary(got); !slices.Equal(s, tt.want) {
				t.Fatalf("expired %v, want %v", s, tt.want)
			}
			for _, e := range got {
				i := slices.IndexFunc(p.Rules, func(r Rule) bool { return r.RulePriority == e.RulePriority })
				if i < 0 || p.Rules[i].Description != e.Description || e.Description == "" {
					t.Errorf("%s: description %q", e.Image.Digest, e.Description)
				}
			}
			// The input order does not matter.
			rev := slices.Clone(tt.images)
			slices.Reverse(rev)
			if again := Evaluate(p, rev, now); !reflect.DeepEqual(again, got) {
				t.Fatalf("reversed input: %v, want %v", summary(again), tt.want)
			}
		})
	}
}

func TestEvaluateDetails(t *testing.T) {
	policy := func(rules ...string) *Policy {
		t.Helper()
		p, err := ParsePolicy([]byte(`{"rules":[` + strings.Join(rules, ",") + `]}`))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("an image expired by a higher rule still counts for imageCountMoreThan", func(t *testing.T) {
		// Rule 1 expires the newest image, N; rule 2 keeps the two newest
		// (N and M) as if N were still there, so only O goes.
		p := policy(
			`{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPatternList":["bad"],"countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}`,
			`{"rulePriority":2,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}`)
		got := summary(Evaluate(p, []Image{img("N", 2*day, "bad"), img("M", 3*day), img("O", 4*day)}, now))
		if want := []string{"O@2", "N@1"}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
	t.Run("a higher rule that expires nothing still protects what it selects", func(t *testing.T) {
		p := policy(
			`{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["release"],"countType":"imageCountMoreThan","countNumber":100},"action":{"type":"expire"}}`,
			`{"rulePriority":9,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}}`)
		got := summary(Evaluate(p, []Image{img("R", 30*day, "release-1"), img("X", 30*day, "x"), img("U", 30*day), img("Y", 1*day, "y")}, now))
		if want := []string{"U@9", "X@9"}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
	t.Run("prefix and pattern semantics", func(t *testing.T) {
		p := policy(`{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPatternList":["*prod*","v*.*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}`,
			`{"rulePriority":2,"selection":{"tagStatus":"tagged","tagPrefixList":["rc"],"countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}`)
		got := summary(Evaluate(p, []Image{
			img("A", 2*day, "repo-production", "v1.2"), // both patterns, by different tags
			img("B", 2*day, "prod-v1.2"),               // *prod* only: v*.* must match the whole tag
			img("C", 2*day, "v1.2-prod"),               // one tag may match both patterns
			img("D", 2*day, "rc1"),                     // prefix rc
			img("E", 2*day, "xrc"),                     // not a prefix
			img("F", 2*day, "prod"),                    // *prod* matches prod
		}, now))
		if want := []string{"A@1", "C@1", "D@2"}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
	t.Run("ages are exact multiples of 24h", func(t *testing.T) {
		p := policy(`{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":3},"action":{"type":"expire"}}`)
		got := summary(Evaluate(p, []Image{img("A", 3*day), img("B", 3*day+time.Nanosecond), img("C", 3*day-time.Second)}, now))
		if want := []string{"B@1"}; !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		// A now in another zone is the same instant.
		if got2 := summary(Evaluate(p, []Image{img("B", 3*day+time.Nanosecond)}, now.In(time.FixedZone("x", -7*3600)))); !slices.Equal(got2, []string{"B@1"}) {
			t.Fatalf("got %v in another zone", got2)
		}
	})
	t.Run("huge countNumber", func(t *testing.T) {
		p := policy(`{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":2147483647},"action":{"type":"expire"}}`)
		if got := Evaluate(p, []Image{{Digest: "Z"}, img("A", 290*365*day)}, now); len(got) != 0 {
			t.Fatalf("got %v", summary(got))
		}
		q := policy(`{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2147483647},"action":{"type":"expire"}}`)
		if got := Evaluate(q, []Image{img("A", day)}, now); len(got) != 0 {
			t.Fatalf("got %v", summary(got))
		}
	})
	t.Run("invalid or nil policy expires nothing", func(t *testing.T) {
		imgs := []Image{img("A", 100*day)}
		if got := Evaluate(nil, imgs, now); got != nil {
			t.Fatalf("nil policy: %v", summary(got))
		}
		bad := &Policy{Rules: []Rule{{RulePriority: 1, Selection: Selection{TagStatus: "any", CountType: CountTypeImageCountMoreThan, CountNumber: 0}, Action: Action{Type: "expire"}}}}
		if got := Evaluate(bad, imgs, now); got != nil {
			t.Fatalf("invalid policy: %v", summary(got))
		}
	})
	t.Run("results do not alias the input", func(t *testing.T) {
		p := policy(`{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}`)
		imgs := []Image{img("A", 2*day, "t")}
		got := Evaluate(p, imgs, now)
		got[0].Image.Tags[0] = "changed"
		if imgs[0].Tags[0] != "t" {
			t.Fatal("Evaluate returned the caller's tag slice")
		}
	})
}

// TestParsePolicyRefusals has one case per refusal.
func TestParsePolicyRefusals(t *testing.T) {
	sel := func(s string) string {
		return `{"rules":[{"rulePriority":1,"selection":` + s + `,"action":{"type":"expire"}}]}`
	}
	rule := func(prio int, s string) string {
		return fmt.Sprintf(`{"rulePriority":%d,"selection":%s,"action":{"type":"expire"}}`, prio, s)
	}
	rules := func(rs ...string) string { return `{"rules":[` + strings.Join(rs, ",") + `]}` }
	const (
		anyCount      = `{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1}`
		untaggedCount = `{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1}`
	)
	tagged := func(list string) string {
		return `{"tagStatus":"tagged",` + list + `,"countType":"imageCountMoreThan","countNumber":1}`
	}
	many := make([]string, MaxRules+1)
	for i := range many {
		many[i] = rule(i+1, tagged(fmt.Sprintf(`"tagPrefixList":["p%d"]`, i)))
	}
	long := `{"rules":[{"rulePriority":1,"description":"` + strings.Repeat("é", MaxPolicyLength) + `","selection":` + anyCount + `,"action":{"type":"expire"}}]}`

	tests := []struct {
		name, text, path, msg string
	}{
		{"empty", ``, "", "empty"},
		{"not JSON", `{"rules":`, "", "not valid JSON"},
		{"trailing data", `{"rules":[` + rule(1, anyCount) + `]} {}`, "", "unexpected data"},
		{"not an object", `[]`, "", "must be a JSON object, not an array"},
		{"too long", long, "", "more than the limit of 30720"},
		{"unknown top-level field", `{"rules":[` + rule(1, anyCount) + `],"version":1}`, "version", "unknown field"},
		{"duplicate top-level field", `{"rules":[` + rule(1, anyCount) + `],"rules":[]}`, "rules", "more than once"},
		{"rules missing", `{}`, "rules", "is required"},
		{"rules not an array", `{"rules":{}}`, "rules", "must be an array"},
		{"rules null", `{"rules":null}`, "rules", "must be an array, not null"},
		{"no rules", `{"rules":[]}`, "rules", "at least one rule"},
		{"too many rules", rules(many...), "rules", "more than the limit of 50"},
		{"rule not an object", `{"rules":[1]}`, "rules[0]", "must be an object, not a number"},
		{"unknown rule field", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":{"type":"expire"},"enabled":true}]}`, "rules[0].enabled", "unknown field"},
		{"field names are case-sensitive", `{"rules":[{"RulePriority":1,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].RulePriority", "unknown field"},
		{"duplicate rule field", `{"rules":[{"rulePriority":1,"rulePriority":2,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "more than once"},
		{"rulePriority missing", `{"rules":[{"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "is required"},
		{"rulePriority a string", `{"rules":[{"rulePriority":"1","selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "must be an integer, not a string"},
		{"rulePriority a fraction", `{"rules":[{"rulePriority":1.5,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "must be an integer, not 1.5"},
		{"rulePriority with an exponent", `{"rules":[{"rulePriority":1e1,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "must be an integer"},
		{"rulePriority null", `{"rules":[{"rulePriority":null,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "not null"},
		{"rulePriority zero", rules(rule(0, anyCount)), "rules[0].rulePriority", "must be between 1 and 2147483647, not 0"},
		{"rulePriority negative", rules(rule(-3, anyCount)), "rules[0].rulePriority", "not -3"},
		{"rulePriority too large", rules(rule(1<<31, anyCount)), "rules[0].rulePriority", "not 2147483648"},
		{"rulePriority huge", `{"rules":[{"rulePriority":99999999999999999999999,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].rulePriority", "must be between"},
		{"duplicate rulePriority", rules(rule(1, tagged(`"tagPrefixList":["a"]`)), rule(1, tagged(`"tagPrefixList":["b"]`))), "rules[1].rulePriority", "also the rulePriority of rules[0]"},
		{"description not a string", `{"rules":[{"rulePriority":1,"description":7,"selection":` + anyCount + `,"action":{"type":"expire"}}]}`, "rules[0].description", "must be a string"},
		{"selection missing", `{"rules":[{"rulePriority":1,"action":{"type":"expire"}}]}`, "rules[0].selection", "is required"},
		{"selection not an object", `{"rules":[{"rulePriority":1,"selection":"any","action":{"type":"expire"}}]}`, "rules[0].selection", "must be an object, not a string"},
		{"unknown selection field", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1,"tagRegex":"x"}`), "rules[0].selection.tagRegex", "unknown field"},
		{"tagStatus missing", sel(`{"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagStatus", "is required"},
		{"tagStatus invalid", sel(`{"tagStatus":"TAGGED","tagPrefixList":["a"],"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagStatus", `not "TAGGED"`},
		{"tagged without a list", sel(`{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection", "needs a tagPrefixList or a tagPatternList"},
		{"tagged with both lists", sel(tagged(`"tagPrefixList":["a"],"tagPatternList":["b*"]`)), "rules[0].selection", "not both"},
		{"empty tagPrefixList", sel(tagged(`"tagPrefixList":[]`)), "rules[0].selection.tagPrefixList", "must not be empty"},
		{"empty tagPatternList", sel(tagged(`"tagPatternList":[]`)), "rules[0].selection.tagPatternList", "must not be empty"},
		{"empty prefix", sel(tagged(`"tagPrefixList":["a",""]`)), "rules[0].selection.tagPrefixList[1]", "must not be empty"},
		{"wildcard in a prefix", sel(tagged(`"tagPrefixList":["prod*"]`)), "rules[0].selection.tagPrefixList[0]", "use tagPatternList"},
		{"empty pattern", sel(tagged(`"tagPatternList":[""]`)), "rules[0].selection.tagPatternList[0]", "must not be empty"},
		{"five wildcards", sel(tagged(`"tagPatternList":["*test*1*2*3", "test*1*2*3*4*5*6"]`)), "rules[0].selection.tagPatternList[1]", "6 wildcards (*), more than the limit of 4"},
		{"five wildcards, all stars", sel(tagged(`"tagPatternList":["*****"]`)), "rules[0].selection.tagPatternList[0]", "5 wildcards"},
		{"tagPatternList not an array", sel(tagged(`"tagPatternList":"prod*"`)), "rules[0].selection.tagPatternList", "must be an array of strings, not a string"},
		{"tagPrefixList null", sel(tagged(`"tagPrefixList":null`)), "rules[0].selection.tagPrefixList", "not null"},
		{"list element not a string", sel(tagged(`"tagPrefixList":["a",2]`)), "rules[0].selection.tagPrefixList[1]", "must be a string, not a number"},
		{"untagged with tagPrefixList", sel(`{"tagStatus":"untagged","tagPrefixList":["a"],"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagPrefixList", `omitted when tagStatus is "untagged"`},
		{"untagged with an empty tagPrefixList", sel(`{"tagStatus":"untagged","tagPrefixList":[],"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagPrefixList", "must be omitted"},
		{"untagged with tagPatternList", sel(`{"tagStatus":"untagged","tagPatternList":["a*"],"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagPatternList", "must be omitted"},
		{"any with tagPatternList", sel(`{"tagStatus":"any","tagPatternList":["a*"],"countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.tagPatternList", `omitted when tagStatus is "any"`},
		{"two untagged rules", rules(rule(1, untaggedCount), rule(2, `{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":3}`)), "rules[1].selection.tagStatus", "only one rule may select untagged images"},
		{"any rule not the highest", rules(rule(5, anyCount), rule(7, untaggedCount)), "rules[0].selection.tagStatus", "must have the highest rulePriority, but 5 is not (rules[1] has 7)"},
		{"two any rules", rules(rule(1, anyCount), rule(2, `{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":3}`)), "rules[0].selection.tagStatus", "highest rulePriority"},
		{"same prefixes in two rules", rules(rule(1, tagged(`"tagPrefixList":["a","b"]`)), rule(2, tagged(`"tagPrefixList":["b","a","a"]`))), "rules[1].selection.tagPrefixList", "same tags as rules[0]"},
		{"same prefixes in two rules, NUL in an entry", rules(rule(1, tagged(`"tagPrefixList":["a\u0000b"]`)), rule(2, tagged(`"tagPrefixList":["a\u0000b"]`))), "rules[1].selection.tagPrefixList", "same tags as rules[0]"},
		{"same patterns in two rules", rules(rule(3, tagged(`"tagPatternList":["a*"]`)), rule(2, tagged(`"tagPatternList":["a*"]`))), "rules[1].selection.tagPatternList", "same tags as rules[0]"},
		{"storageClass archive", sel(`{"tagStatus":"any","storageClass":"archive","countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.storageClass", "no archive storage class"},
		{"storageClass unknown", sel(`{"tagStatus":"any","storageClass":"cold","countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.storageClass", `must be "standard"`},
		{"storageClass empty", sel(`{"tagStatus":"any","storageClass":"","countType":"imageCountMoreThan","countNumber":1}`), "rules[0].selection.storageClass", "must not be empty"},
		{"countType missing", sel(`{"tagStatus":"any","countNumber":1}`), "rules[0].selection.countType", "is required"},
		{"countType invalid", sel(`{"tagStatus":"any","countType":"imageCountLessThan","countNumber":1}`), "rules[0].selection.countType", `not "imageCountLessThan"`},
		{"countType sinceImageTransitioned", sel(`{"tagStatus":"any","countType":"sinceImageTransitioned","countUnit":"days","countNumber":90}`), "rules[0].selection.countType", "no archive storage class"},
		{"countUnit missing (sinceImagePushed)", sel(`{"tagStatus":"any","countType":"sinceImagePushed","countNumber":1}`), "rules[0].selection.countUnit", `required when countType is "sinceImagePushed"`},
		{"countUnit missing (sinceImagePulled)", sel(`{"tagStatus":"any","countType":"sinceImagePulled","countNumber":1}`), "rules[0].selection.countUnit", `required when countType is "sinceImagePulled"`},
		{"countUnit not days", sel(`{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"hours","countNumber":1}`), "rules[0].selection.countUnit", `must be "days", not "hours"`},
		{"countUnit empty", sel(`{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"","countNumber":1}`), "rules[0].selection.countUnit", "must not be empty"},
		{"countUnit with imageCountMoreThan", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countUnit":"days","countNumber":1}`), "rules[0].selection.countUnit", `omitted when countType is "imageCountMoreThan"`},
		{"countNumber missing", sel(`{"tagStatus":"any","countType":"imageCountMoreThan"}`), "rules[0].selection.countNumber", "is required"},
		{"countNumber zero", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":0}`), "rules[0].selection.countNumber", "not 0"},
		{"countNumber negative", sel(`{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":-1}`), "rules[0].selection.countNumber", "not -1"},
		{"countNumber a fraction", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2.0}`), "rules[0].selection.countNumber", "must be an integer, not 2.0"},
		{"countNumber a string", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":"1"}`), "rules[0].selection.countNumber", "must be an integer, not a string"},
		{"countNumber too large", sel(`{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2147483648}`), "rules[0].selection.countNumber", "must be between 1 and 2147483647"},
		{"action missing", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `}]}`, "rules[0].action", "is required"},
		{"action not an object", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":"expire"}]}`, "rules[0].action", "must be an object, not a string"},
		{"action type missing", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":{}}]}`, "rules[0].action.type", "is required"},
		{"action type invalid", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":{"type":"delete"}}]}`, "rules[0].action.type", `must be "expire", not "delete"`},
		{"action type transition", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":{"type":"transition"}}]}`, "rules[0].action.type", "no archive storage class"},
		{"unknown action field", `{"rules":[{"rulePriority":1,"selection":` + anyCount + `,"action":{"type":"expire","dryRun":true}}]}`, "rules[0].action.dryRun", "unknown field"},
		{"the error names the rule by index", rules(rule(1, tagged(`"tagPrefixList":["a"]`)), rule(2, tagged(`"tagPrefixList":["b"]`)), rule(3, tagged(`"tagPatternList":["a*b*c*d*e*f"]`))), "rules[2].selection.tagPatternList[0]", "more than the limit of 4"},
		// ECR's own archive examples, verbatim.
		{"ECR example: filtering on last pulled time (transition)", `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Archive images not pulled in 90 days",
            "selection": {
                "tagStatus": "any",
                "countType": "sinceImagePulled",
                "countUnit": "days",
                "countNumber": 90
            },
            "action": {
                "type": "transition",
                "targetStorageClass": "archive"
            }
        }
    ]
}`, "rules[0].action.targetStorageClass", "no archive storage class"},
		{"ECR example: filtering on archive transition time", `{
    "rules": [
        {
            "rulePriority": 1,
            "description": "Expire images archived for more than 365 days",
            "selection": {
                "tagStatus": "any",
                "storageClass": "archive",
                "countType": "sinceImageTransitioned",
                "countUnit": "days",
                "countNumber": 365
            },
            "action": {
                "type": "expire"
            }
        }
    ]
}`, "rules[0].selection.storageClass", "no archive storage class"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.text))
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if !errors.Is(err, ErrPolicyInvalid) {
				t.Fatalf("%v does not wrap ErrPolicyInvalid", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("%v is not a *FieldError", err)
			}
			if fe.Path != tt.path || !strings.Contains(fe.Msg, tt.msg) {
				t.Fatalf("got path %q msg %q, want path %q msg containing %q", fe.Path, fe.Msg, tt.path, tt.msg)
			}
			if !strings.HasPrefix(err.Error(), "gc: invalid lifecycle policy: ") {
				t.Fatalf("message %q", err)
			}
		})
	}
}

func TestParsePolicyAccepts(t *testing.T) {
	many := make([]string, MaxRules)
	for i := range many {
		many[i] = fmt.Sprintf(`{"rulePriority":%d,"selection":{"tagStatus":"tagged","tagPrefixList":["p%d"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}`, i+1, i)
	}
	atLimit := `{"rules":[{"rulePriority":1,"description":"`
	atLimit += strings.Repeat("é", MaxPolicyLength-utf8.RuneCountInString(atLimit)-len(`","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`))
	atLimit += `","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`
	for name, text := range map[string]string{
		"prefix and pattern lists in different rules": `{"rules":[
			{"rulePriority":10,"selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
			{"rulePriority":20,"selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
			{"rulePriority":30,"selection":{"tagStatus":"untagged","countType":"sinceImagePulled","countUnit":"days","countNumber":5},"action":{"type":"expire"}},
			{"rulePriority":40,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":500},"action":{"type":"expire"}}]}`,
		"prefix sets that differ only in separators": `{"rules":[
			{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["a\u0000b"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
			{"rulePriority":2,"selection":{"tagStatus":"tagged","tagPrefixList":["a","b"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		"storageClass standard":                `{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","storageClass":"standard","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		"four wildcards":                       `{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPatternList":["*test*1*2*3", "test*1*2*3*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		"50 rules":                             `{"rules":[` + strings.Join(many, ",") + `]}`,
		"exactly 30720 characters":             atLimit,
		"any rule alone with a large priority": `{"rules":[{"rulePriority":2147483647,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2147483647},"action":{"type":"expire"}}]}`,
		"whitespace around":                    " \n{\"rules\":[{\"rulePriority\":1,\"selection\":{\"tagStatus\":\"untagged\",\"countType\":\"imageCountMoreThan\",\"countNumber\":1},\"action\":{\"type\":\"expire\"}}]}\n ",
	} {
		t.Run(name, func(t *testing.T) {
			if name == "exactly 30720 characters" && utf8.RuneCountInString(text) != MaxPolicyLength {
				t.Fatalf("test text has %d characters", utf8.RuneCountInString(text))
			}
			p, err := ParsePolicy([]byte(text))
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			p2, err := parsePolicy(b, false)
			if err != nil || !reflect.DeepEqual(p, p2) {
				t.Fatalf("round trip: %v\n%s", err, b)
			}
		})
	}
}

func TestPolicyMarshalsToECRJSON(t *testing.T) {
	p := &Policy{Rules: []Rule{
		{RulePriority: 1, Description: "d", Selection: Selection{TagStatus: "tagged", TagPatternList: []string{"prod*"}, CountType: "sinceImagePushed", CountUnit: "days", CountNumber: 14}, Action: Action{Type: "expire"}},
		{RulePriority: 2, Selection: Selection{TagStatus: "any", CountType: "imageCountMoreThan", CountNumber: 3}, Action: Action{Type: "expire"}},
	}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"rules":[{"rulePriority":1,"description":"d","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},` +
		`{"rulePriority":2,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":3},"action":{"type":"expire"}}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestWildcardMatch(t *testing.T) {
	for _, tt := range []struct {
		pattern, s string
		want       bool
	}{
		{"prod*", "prod", true},
		{"prod*", "prod1", true},
		{"prod*", "production-team1", true},
		{"prod*", "preprod", false},
		{"*prod*", "repo-production", true},
		{"*prod*", "prod-team", true},
		{"*prod*", "pro", false},
		{"latest", "latest", true},
		{"latest", "latest1", false},
		{"latest", "xlatest", false},
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"", "a", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"*test*1*2*3", "my-test-1-2-3", true},
		{"*test*1*2*3", "test123x", false},
		{"test*1*2*3*", "test123", true},
		{"v*.*", "v1.2", true},
		{"v*.*", "prod-v1.2", false},
		{"**", "x", true},
		{"a*b*c", "abbbbc", true},
		{"a*b*c", "acb", false},
	} {
		if got := wildcardMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("wildcardMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

// referenceMatch is wildcardMatch by regular expression.
func referenceMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile(`^(?s:` + strings.Join(parts, ".*") + `)$`).MatchString(s)
}

// TestWildcardMatchAgrees checks wildcardMatch against a regular expression
// and against metastore.MatchWildcard, which enforces tag immutability in
// the FSM: the two must never disagree.
func TestWildcardMatchAgrees(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	gen := func(alphabet string, n int) string {
		b := make([]byte, r.IntN(n+1))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		return string(b)
	}
	for range 20000 {
		pattern, s := gen("ab*", 7), gen("ab", 9)
		want := referenceMatch(pattern, s)
		if got := wildcardMatch(pattern, s); got != want {
			t.Fatalf("wildcardMatch(%q, %q) = %v, want %v", pattern, s, got, want)
		}
		if got := metastore.MatchWildcard(pattern, s); got != want {
			t.Fatalf("metastore.MatchWildcard(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	}
}

func FuzzWildcardMatch(f *testing.F) {
	f.Add("*prod*", "repo-production")
	f.Add("a*a", "a")
	f.Add("é*", "éa")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if strings.Count(pattern, "*") > 8 || len(pattern) > 64 || len(s) > 256 {
			return // keep the regexp reference fast
		}
		if utf8.ValidString(pattern) && utf8.ValidString(s) { // regexp needs UTF-8
			if got, want := wildcardMatch(pattern, s), referenceMatch(pattern, s); got != want {
				t.Fatalf("wildcardMatch(%q, %q) = %v, want %v", pattern, s, got, want)
			}
		}
		if wildcardMatch(pattern, s) != metastore.MatchWildcard(pattern, s) {
			t.Fatalf("gc and metastore disagree on (%q, %q)", pattern, s)
		}
	})
}

// ---- properties ----

var (
	propTags     = []string{"prod", "prod-1", "prod-2", "production", "beta-1", "beta-2", "alpha-1", "v1.0", "v1.1", "latest", "dev-x", "git hash"}
	propPrefixes = []string{"prod", "beta", "alpha", "v1", "dev", "l", "p"}
	propPatterns = []string{"prod*", "*-1", "beta*", "*a*", "v1.*", "latest", "*", "a*-*", "*prod*", "*-*-*", "git*"}
)

func randomPolicy(r *rand.Rand) *Policy {
	for {
		n := 1 + r.IntN(6)
		prios := r.Perm(100)
		p := &Policy{}
		for i := range n {
			s := Selection{CountNumber: 1 + r.IntN(5)}
			switch r.IntN(5) {
			case 0:
				s.TagStatus = TagStatusUntagged
			case 1:
				s.TagStatus = TagStatusAny
			default:
				s.TagStatus = TagStatusTagged
				pool := &s.TagPrefixList
				from := propPrefixes
				if r.IntN(2) == 0 {
					pool, from = &s.TagPatternList, propPatterns
				}
				for range 1 + r.IntN(2) {
					*pool = append(*pool, from[r.IntN(len(from))])
				}
			}
			switch r.IntN(3) {
			case 0:
				s.CountType = CountTypeImageCountMoreThan
			case 1:
				s.CountType, s.CountUnit, s.CountNumber = CountTypeSinceImagePushed, CountUnitDays, 1+r.IntN(30)
			case 2:
				s.CountType, s.CountUnit, s.CountNumber = CountTypeSinceImagePulled, CountUnitDays, 1+r.IntN(30)
			}
			rule := Rule{RulePriority: 1 + prios[i], Selection: s, Action: Action{Type: ActionExpire}, Description: fmt.Sprintf("r%d", i)}
			if s.TagStatus == TagStatusAny {
				rule.RulePriority = 1000
			}
			p.Rules = append(p.Rules, rule)
		}
		if p.Validate() == nil {
			return p
		}
	}
}

func randomImages(r *rand.Rand) []Image {
	imgs := make([]Image, r.IntN(16))
	for i := range imgs {
		im := Image{
			Digest:   fmt.Sprintf("sha256:%02d", i),
			PushedAt: now.Add(-time.Duration(r.IntN(40*24)) * time.Hour),
		}
		for range r.IntN(4) {
			im.Tags = append(im.Tags, propTags[r.IntN(len(propTags))])
		}
		if r.IntN(2) == 0 {
			im.LastPulledAt = now.Add(-time.Duration(r.IntN(40*24)) * time.Hour)
		}
		imgs[i] = im
	}
	return imgs
}

// expiresByDefinition restates ECR's rules independently of Evaluate: an
// image can only be expired by the first rule (by priority) that selects
// it, and is expired iff that rule's criterion holds, the criterion of
// imageCountMoreThan ranking the image among everything the rule selects.
func expiresByDefinition(p *Policy, images []Image, i int, now time.Time) (Rule, bool) {
	rules := slices.Clone(p.Rules)
	slices.SortFunc(rules, func(a, b Rule) int { return a.RulePriority - b.RulePriority })
	for _, r := range rules {
		if !r.Selection.selects(&images[i]) {
			continue
		}
		switch r.Selection.CountType {
		case CountTypeImageCountMoreThan:
			newer := 0
			for j := range images {
				if j != i && r.Selection.selects(&images[j]) &&
					(images[j].PushedAt.After(images[i].PushedAt) ||
						images[j].PushedAt.Equal(images[i].PushedAt) && images[j].Digest > images[i].Digest) {
					newer++
				}
			}
			return r, newer >= r.Selection.CountNumber
		case CountTypeSinceImagePushed:
			return r, now.Sub(images[i].PushedAt) > time.Duration(r.Selection.CountNumber)*day
		case CountTypeSinceImagePulled:
			last := images[i].PushedAt
			if images[i].LastPulledAt.After(last) {
				last = images[i].LastPulledAt
			}
			return r, now.Sub(last) > time.Duration(r.Selection.CountNumber)*day
		}
	}
	return Rule{}, false
}

func TestEvaluateProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for iter := range 3000 {
		p := randomPolicy(r)
		images := randomImages(r)
		got := Evaluate(p, images, now)

		// Deterministic, whatever the input order.
		shuffled := slices.Clone(images)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again := Evaluate(p, shuffled, now); !reflect.DeepEqual(again, got) {
			t.Fatalf("iteration %d: shuffled input gives %v, not %v", iter, summary(again), summary(got))
		}

		byDigest := map[string]int{}
		for i, im := range images {
			byDigest[im.Digest] = i
		}
		expired := map[string]Expiration{}
		for k, e := range got {
			if _, dup := expired[e.Image.Digest]; dup {
				t.Fatalf("iteration %d: %s expired twice", iter, e.Image.Digest)
			}
			expired[e.Image.Digest] = e
			if k > 0 {
				prev := got[k-1].Image
				if c := prev.PushedAt.Compare(e.Image.PushedAt); c > 0 || c == 0 && prev.Digest > e.Image.Digest {
					t.Fatalf("iteration %d: results out of order", iter)
				}
			}
			i, ok := byDigest[e.Image.Digest]
			if !ok || !reflect.DeepEqual(images[i], e.Image) {
				t.Fatalf("iteration %d: expired image %+v is not an input", iter, e.Image)
			}
			// Expired ⊆ selected by the rule that expires it, and by no
			// higher-priority rule.
			var rule *Rule
			for ri := range p.Rules {
				if p.Rules[ri].RulePriority == e.RulePriority {
					rule = &p.Rules[ri]
				}
			}
			if rule == nil || rule.Description != e.Description || !rule.Selection.selects(&images[i]) {
				t.Fatalf("iteration %d: %s expired by priority %d, which does not select it", iter, e.Image.Digest, e.RulePriority)
			}
			for _, hr := range p.Rules {
				if hr.RulePriority < e.RulePriority && hr.Selection.selects(&images[i]) {
					t.Fatalf("iteration %d: %s expired by priority %d but selected by priority %d", iter, e.Image.Digest, e.RulePriority, hr.RulePriority)
				}
			}
		}
		// Exactly the images the definition expires, by the same rule.
		for i, im := range images {
			rule, want := expiresByDefinition(p, images, i, now)
			e, ok := expired[im.Digest]
			if ok != want || ok && e.RulePriority != rule.RulePriority {
				t.Fatalf("iteration %d: image %+v: expired=%v (by %d), definition says %v (by %d)\npolicy %+v",
					iter, im, ok, e.RulePriority, want, rule.RulePriority, p)
			}
		}

		// A valid policy survives a round trip through its JSON.
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := ParsePolicy(b)
		if err != nil || !reflect.DeepEqual(p, p2) {
			t.Fatalf("iteration %d: round trip: %v\n%s", iter, err, b)
		}
	}
}

// ---- fuzzing ----

func FuzzParsePolicy(f *testing.F) {
	for _, seed := range []string{
		`{"rules":[{"rulePriority":1,"description":"Expire images older than 14 days","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["alpha","beta"],"countType":"sinceImagePushed","countNumber":5,"countUnit":"days"},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"sinceImagePulled","countUnit":"days","countNumber":1},"action":{"type":"expire"}},{"rulePriority":3,"selection":{"tagStatus":"any","storageClass":"standard","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"description":"\u2028<&>\u0041\ud800","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}`,
		`{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":90},"action":{"type":"transition","targetStorageClass":"archive"}}]}`,
		`{"rules":[{"rulePriority":1.0,"selection":{}}]}`,
		`{"rules":[]}`,
		`[]`,
		``,
		`{"rules":[{"rulePriority":1,"rulePriority":1}]}`,
	} {
		f.Add([]byte(seed))
	}
	images := []Image{
		img("A", 10*day, "prod-1", "beta-1"), img("B", 2*day), img("C", 40*day, "alpha-2"),
		pulled(img("D", 100*day, "latest"), 3*day), img("E", 2*day),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			var fe *FieldError
			if p != nil || !errors.Is(err, ErrPolicyInvalid) || !errors.As(err, &fe) {
				t.Fatalf("bad failure: %v, %v", p, err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed policy does not validate: %v", err)
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		// Escaping can lengthen the text (U+2028 becomes \u2028), so the
		// structural round trip skips the length limit; the limit is
		// checked when the text still fits.
		p2, err := parsePolicy(b, false)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v", p, p2)
		}
		if utf8.RuneCount(b) <= MaxPolicyLength {
			if _, err := ParsePolicy(b); err != nil {
				t.Fatalf("re-parse of %s: %v", b, err)
			}
		}
		got := Evaluate(p, images, now)
		if !reflect.DeepEqual(got, Evaluate(p2, images, now)) {
			t.Fatal("equal policies expire differently")
		}
	})
}
