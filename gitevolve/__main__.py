from gitevolve.cli import main

main()
