package oci_test

import (
	"errors"
	"testing"

	"github.com/strata-registry/strata/api/oci"
)

func TestParseRange(t *testing.T) {
	tests := []struct {
		header     string
		size       int64
		start, end int64
		ok         bool
		err        error
	}{
		{"", 100, 0, 0, false, nil},
		{"", 0, 0, 0, false, nil},

		{"bytes=0-0", 100, 0, 0, true, nil},
		{"bytes=0-99", 100, 0, 99, true, nil},
		{"bytes=10-19", 100, 10, 19, true, nil},
		{"bytes=10-1000", 100, 10, 99, true, nil},
		{"bytes=99-99", 100, 99, 99, true, nil},
		{"bytes=99-", 100, 99, 99, true, nil},
		{"bytes=0-", 100, 0, 99, true, nil},
		{"bytes=-1", 100, 99, 99, true, nil},
		{"bytes=-10", 100, 90, 99, true, nil},
		{"bytes=-100", 100, 0, 99, true, nil},
		{"bytes=-1000", 100, 0, 99, true, nil},
		{"bytes=500-1499", 2048, 500, 1499, true, nil},
		{"bytes=2000-5000", 2048, 2000, 2047, true, nil},
		{"Bytes=1-2", 100, 1, 2, true, nil},
		{"BYTES=1-2", 100, 1, 2, true, nil},
		{"bytes=007-010", 100, 7, 10, true, nil},
		{"bytes= 1-2 ", 100, 1, 2, true, nil},
		{"bytes=1-2,", 100, 1, 2, true, nil},
		{"bytes=, 1-2 ,,", 100, 1, 2, true, nil},
		{"bytes=0-99999999999999999999999", 100, 0, 99, true, nil},
		{"bytes=-99999999999999999999999", 100, 0, 99, true, nil},
		{"bytes=0-9223372036854775807", 9223372036854775807, 0, 9223372036854775806, true, nil},

		// not satisfiable
		{"bytes=100-", 100, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=100-200", 100, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=5000-10000", 2048, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=-0", 100, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=-000", 100, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=0-", 0, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=0-0", 0, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=-5", 0, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=0-5", -1, 0, 0, false, oci.ErrRangeNotSatisfiable},
		{"bytes=99999999999999999999999-", 100, 0, 0, false, oci.ErrRangeNotSatisfiable},

		// invalid: caller serves the whole blob
		{"bytes=5-3", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=500-0", 2048, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=99999999999999999999999-99999999999999999999998", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=0-1,5-6", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=0-1, 3-", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=-1,-2", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=,", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=-", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=a-b", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=1-2-3", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=+1-2", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=1 -2", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=--1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes 0-1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes =0-1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"0-1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"items=0-1", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"garbage", 100, 0, 0, false, oci.ErrRangeInvalid},
		{" ", 100, 0, 0, false, oci.ErrRangeInvalid},
		{"bytes=5-3", 0, 0, 0, false, oci.ErrRangeInvalid}, // malformed beats empty
	}
	for _, tt := range tests {
		start, end, ok, err := oci.ParseRange(tt.header, tt.size)
		if tt.err == nil {
			if err != nil || ok != tt.ok || start != tt.start || end != tt.end {
				t.Errorf("ParseRange(%q, %d) = %d, %d, %v, %v; want %d, %d, %v, nil",
					tt.header, tt.size, start, end, ok, err, tt.start, tt.end, tt.ok)
			}
			continue
		}
		if !errors.Is(err, tt.err) || ok {
			t.Errorf("ParseRange(%q, %d) = %d, %d, %v, %v; want error %v",
				tt.header, tt.size, start, end, ok, err, tt.err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		header     string
		start, end int64
		ok         bool
	}{
		{"0-0", 0, 0, true},
		{"0-1023", 0, 1023, true},
		{"1024-2047", 1024, 2047, true},
		{"0-9223372036854775807", 0, 9223372036854775807, true},
		{" 5-10 ", 5, 10, true},
		{"bytes 0-1023/*", 0, 1023, true},
		{"bytes 0-1023/1024", 0, 1023, true},
		{"bytes 0-1023/4096", 0, 1023, true},
		{"Bytes  0-9/*", 0, 9, true},
		{"bytes=0-1023", 0, 1023, true},
		{"BYTES=7-7", 7, 7, true},

		{"", 0, 0, false},
		{" ", 0, 0, false},
		{"5-3", 0, 0, false},
		{"-1-5", 0, 0, false},
		{"1--5", 0, 0, false},
		{"-5", 0, 0, false},
		{"5-", 0, 0, false},
		{"5", 0, 0, false},
		{"a-b", 0, 0, false},
		{"+1-5", 0, 0, false},
		{"0-9223372036854775808", 0, 0, false},
		{"9223372036854775808-9223372036854775809", 0, 0, false},
		{"0-99999999999999999999999", 0, 0, false},
		{"bytes 0-1023/1023", 0, 0, false},
		{"bytes 0-1023/0", 0, 0, false},
		{"bytes 0-1023/", 0, 0, false},
		{"bytes 0-1023", 0, 0, false},
		{"bytes 0-1023/abc", 0, 0, false},
		{"bytes 0-1023/**", 0, 0, false},
		{"bytes */1024", 0, 0, false},
		{"bytes=0-1023/*", 0, 0, false},
		{"bytes=", 0, 0, false},
		{"bytes 5-3/*", 0, 0, false},
		{"items 0-1/*", 0, 0, false},
		{"0 - 5", 0, 0, false},
		{"0-5,6-7", 0, 0, false},
	}
	for _, tt := range tests {
		start, end, err := oci.ParseContentRange(tt.header)
		if tt.ok {
			if err != nil || start != tt.start || end != tt.end {
				t.Errorf("ParseContentRange(%q) = %d, %d, %v; want %d, %d", tt.header, start, end, err, tt.start, tt.end)
			}
			continue
		}
		if !errors.Is(err, oci.ErrContentRangeInvalid) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %v; want ErrContentRangeInvalid", tt.header, start, end, err)
		}
	}
}

func TestFormatRange(t *testing.T) {
	tests := []struct {
		start, end int64
		want       string
	}{
		{0, 0, "0-0"},
		{0, 1023, "0-1023"},
		{0, -1, "0-0"}, // empty upload: size 0, FormatRange(0, size-1)
		{5, 4, "5-5"},
		{-3, 10, "0-10"},
		{0, 9223372036854775807, "0-9223372036854775807"},
	}
	for _, tt := range tests {
		if got := oci.FormatRange(tt.start, tt.end); got != tt.want {
			t.Errorf("FormatRange(%d, %d) = %q, want %q", tt.start, tt.end, got, tt.want)
		}
	}
	// What FormatRange writes, ParseContentRange reads.
	for _, r := range [][2]int64{{0, 0}, {0, 1}, {100, 4095}} {
		s, e, err := oci.ParseContentRange(oci.FormatRange(r[0], r[1]))
		if err != nil || s != r[0] || e != r[1] {
			t.Errorf("round trip %v: %d, %d, %v", r, s, e, err)
		}
	}
}
