from mmfzoo_cli.main import main

main()
