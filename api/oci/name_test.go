package oci_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-registry/strata/api/oci"
)

func TestValidateRepoName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		// valid
		{"a", true},
		{"0", true},
		{"library/ubuntu", true},
		{"a/b/c/d", true},
		{"a.b", true},
		{"a_b", true},
		{"a__b", true},
		{"a-b", true},
		{"a---b", true},
		{"foo-bar/baz_qux.v2/x__y--z", true},
		{"9a/8b", true},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("ab/", 84) + "abc", true}, // exactly 255

		// empty and length
		{"", false},
		{strings.Repeat("a", 256), false},
		{strings.Repeat("ab/", 85), false}, // 255, but trailing '/'
		{strings.Repeat("ab/", 85) + "a", false},

		// slashes
		{"a//b", false},
		{"a/", false},
		{"/a", false},
		{"/", false},
		{"a/./b", false},
		{"a/-b", false},
		{"a/b-", false},

		// separators
		{"-a", false},
		{"a-", false},
		{".a", false},
		{"a.", false},
		{"_a", false},
		{"a_", false},
		{"a___b", false},
		{"a..b", false},
		{"a._b", false},
		{"a_-b", false},
		{"a-.b", false},
		{"a-_b", false},
		{"a.-b", false},

		// characters
		{"A", false},
		{"library/Ubuntu", false},
		{"a b", false},
		{"a:b", false},
		{"a@b", false},
		{"a\x00", false},
		{"é", false},
		{"a\\b", false},
		{"a+b", false},
	}
	for _, tt := range tests {
		err := oci.ValidateRepoName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateRepoName(%.40q) = %v, want ok=%v", tt.name, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, oci.ErrNameInvalid) {
			t.Errorf("ValidateRepoName(%.40q) = %v, does not wrap ErrNameInvalid", tt.name, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "oci: ") {
			t.Errorf("error %q lacks the oci: prefix", err)
		}
	}
}

func TestValidateRepoNameMessages(t *testing.T) {
	for name, want := range map[string]string{
		"":                       "empty",
		strings.Repeat("a", 300): "300 bytes long",
		"Library":                "uppercase",
		"a//b":                   "offset 2",
		"a/":                     "must end with",
		"a b":                    `' '`,
	} {
		err := oci.ValidateRepoName(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateRepoName(%.20q) = %v, want message containing %q", name, err, want)
		}
	}
	// Long inputs are truncated in messages.
	if err := oci.ValidateRepoName(strings.Repeat("A", 10000)); len(err.Error()) > 400 {
		t.Errorf("message not truncated: %d bytes", len(err.Error()))
	}
}

func TestValidateTag(t *testing.T) {
	tests := []struct {
		tag string
		ok  bool
	}{
		{"latest", true},
		{"v1.0.0", true},
		{"_", true},
		{"0", true},
		{"A-b_c.D", true},
		{"_a..--__", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{".a", false},
		{"-a", false},
		{"a:b", false},
		{"a/b", false},
		{"a b", false},
		{"a@sha256", false},
		{"é", false},
		{"a\n", false},
		{strings.Repeat("a", 129), false},
	}
	for _, tt := range tests {
		err := oci.ValidateTag(tt.tag)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateTag(%.40q) = %v, want ok=%v", tt.tag, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, oci.ErrTagInvalid) {
			t.Errorf("ValidateTag(%.40q) = %v, does not wrap ErrTagInvalid", tt.tag, err)
		}
	}
}

func TestNoAllocsOnSuccess(t *testing.T) {
	const dg = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
	checks := map[string]func(){
		"ValidateRepoName": func() { _ = oci.ValidateRepoName("library/some-image_name.v2") },
		"ValidateTag":      func() { _ = oci.ValidateTag("v1.2.3-rc.1") },
		"ParseDigest":      func() { _, _ = oci.ParseDigest(dg) },
		"IsDigest":         func() { _ = oci.IsDigest(dg) },
		"ParseRange": func() {
			_, _, _, _ = oci.ParseRange("bytes=100-199", 1000)
			_, _, _, _ = oci.ParseRange("bytes=-10", 1000)
		},
		"ParseContentRange": func() {
			_, _, _ = oci.ParseContentRange("0-1023")
			_, _, _ = oci.ParseContentRange("bytes 0-1023/*")
		},
	}
	for name, f := range checks {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}
