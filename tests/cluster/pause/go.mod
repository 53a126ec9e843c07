module tote.dev/testpause

go 1.21
