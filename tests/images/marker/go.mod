module tote.dev/testmarker

go 1.21
