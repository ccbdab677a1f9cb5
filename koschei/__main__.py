from koschei.cli import main

main()
