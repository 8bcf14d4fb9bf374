from mmf_cli.main import main

main()
