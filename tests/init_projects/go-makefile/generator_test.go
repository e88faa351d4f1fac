package main

import "testing"

func TestEnum(t *testing.T) {
	if got := Enum("Color", []string{"Red", "Green"}); got != "const (\n\tRed Color = iota\n\tGreen\n)\n" {
		t.Fatalf("got %q", got)
	}
}
