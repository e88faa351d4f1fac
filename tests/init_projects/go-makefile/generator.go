// A fixture of pipekit's tests (shape: powehihihi/enumarr, see ../SOURCES.md).
package main

import "strings"

// Enum writes a Go enum's constants for names.
func Enum(typ string, names []string) string {
	var b strings.Builder
	b.WriteString("const (\n")
	for i, n := range names {
		if i == 0 {
			b.WriteString("\t" + n + " " + typ + " = iota\n")
		} else {
			b.WriteString("\t" + n + "\n")
		}
	}
	b.WriteString(")\n")
	return b.String()
}
