# Render one BOSH job template the way the director does (bosh-template's EvaluationContext),
# for tests, on Debian's ruby with the standard library only.
#
# Input (JSON on stdin): {"template": PATH, "spec": SPEC}, where SPEC is the instance spec the
# director hands to templates: name, deployment, id, index, az, address, ip, networks, bootstrap,
# job: {name, templates} (the instance group's name and jobs: the director's v1 naming, never the
# job's own name), properties (the job's properties, spec defaults already merged in) and links
# ({name => {instances, properties, address, instance_group, default_network, ...}}).
# Output (JSON on stdout): {"output": TEXT, "properties": [...], "link_properties": [[link, name]...],
# "links": [...]} listing every property and link the template asked for, or, with exit status 1,
# {"error": MESSAGE} with the template line when it is known. {"batch": [INPUT...]} renders several
# templates in one run and answers {"batch": [OUTPUT...]} (exit status 0).
#
# The context provides p(name[, default]) (an array of names tries each in turn), if_p(*names)
# { |*values| } with .else / .else_if_p / .else_if_link, spec (OpenStruct), properties,
# link(name) and if_link(name) { |link| } with link.p, link.if_p, link.instances (name, index, id,
# az, address, bootstrap), link.address; ERB with trim mode '-'.

require 'erb'
require 'json'
require 'ostruct'

module RenderHarness
  def self.lookup(collection, name)
    return nil if collection.nil?

    name.split('.').reduce(collection) do |ref, key|
      return nil unless ref.is_a?(Hash)

      value = ref[key]
      return nil if value.nil?

      value
    end
  end

  def self.openstruct(object)
    case object
    when Hash then OpenStruct.new(object.transform_values { |v| openstruct(v) })
    when Array then object.map { |item| openstruct(item) }
    else object
    end
  end

  class UnknownProperty < StandardError
    def initialize(names)
      super("Can't find property '#{names.join("', or '")}'")
    end
  end

  class UnknownLink < StandardError
    def initialize(name)
      super("Can't find link '#{name}'")
    end
  end

  # Property lookups shared by the context and links; `record` notes each name asked for.
  module Lookup
    def p(*args)
      names = Array(args[0])
      names.each { |name| record(name) }
      names.each do |name|
        value = RenderHarness.lookup(lookup_root, name)
        return value unless value.nil?
      end
      return args[1] if args.length == 2

      raise UnknownProperty, names
    end

    def if_p(*names)
      names.each { |name| record(name) }
      values = names.map do |name|
        value = RenderHarness.lookup(lookup_root, name)
        return ActiveElseBlock.new(self) if value.nil?

        value
      end
      yield(*values)
      InactiveElseBlock.new
    end
  end

  class ActiveElseBlock
    def initialize(context)
      @context = context
    end

    def else
      yield
    end

    def else_if_p(*names, &block)
      @context.if_p(*names, &block)
    end

    def else_if_link(name, &block)
      @context.if_link(name, &block)
    end
  end

  class InactiveElseBlock
    def else; end

    def else_if_p(*_names)
      InactiveElseBlock.new
    end

    def else_if_link(_name)
      InactiveElseBlock.new
    end
  end

  LinkInstance = Struct.new(:name, :index, :id, :az, :address, :bootstrap, keyword_init: true)

  class Link
    include Lookup
    attr_reader :instances, :properties, :instance_group, :default_network, :deployment_name, :domain

    def initialize(name, spec, recorder)
      @name = name
      @recorder = recorder
      @properties = spec['properties'] || {}
      @instances = spec['instances'].map do |i|
        LinkInstance.new(name: i['name'], index: i['index'], id: i['id'], az: i['az'],
                         address: i['address'], bootstrap: i['bootstrap'])
      end
      @address = spec['address']
      @instance_group = spec['instance_group']
      @default_network = spec['default_network']
      @deployment_name = spec['deployment_name']
      @domain = spec['domain'] || 'bosh'
    end

    # The link's DNS address: the one given (a manual link), else the director's group query.
    def address(_criteria = {})
      @address || "q-s0.#{@instance_group}.#{@default_network}.#{@deployment_name}.#{@domain}"
    end

    private

    def lookup_root
      @properties
    end

    def record(name)
      @recorder.call(@name, name)
    end
  end

  class Context
    include Lookup
    attr_reader :spec, :properties, :raw_properties, :name, :index, :read, :read_links, :links_used

    def initialize(spec)
      @raw_properties = spec['properties'] || {}
      @properties = RenderHarness.openstruct(@raw_properties)
      @spec = RenderHarness.openstruct(spec)
      @name = spec.dig('job', 'name')
      @index = spec['index']
      @links = spec['links'] || {}
      @read = []
      @read_links = []
      @links_used = []
    end

    def link(name)
      @links_used << name
      found = @links[name]
      raise UnknownLink, name unless found.is_a?(Hash) && found.key?('instances')

      make_link(name, found)
    end

    def if_link(name)
      @links_used << name
      found = @links[name]
      return ActiveElseBlock.new(self) unless found.is_a?(Hash) && found.key?('instances')

      yield make_link(name, found)
      InactiveElseBlock.new
    end

    def get_binding
      binding
    end

    private

    def make_link(name, found)
      Link.new(name, found, ->(link, prop) { @read_links << [link, prop] })
    end

    def lookup_root
      @raw_properties
    end

    def record(name)
      @read << name
    end
  end

  def self.template_line(error, path)
    frame = error.backtrace&.find { |line| line.start_with?("#{path}:") }
    frame && frame.split(':')[1]
  end

  def self.run(request)
    path = request.fetch('template')
    context = Context.new(request.fetch('spec'))
    erb = ERB.new(File.read(path), trim_mode: '-')
    erb.filename = path
    begin
      output = erb.result(context.get_binding)
    rescue StandardError, ScriptError => e
      line = template_line(e, path)
      where = line ? "line #{line}: " : ''
      return [1, { 'error' => "Error filling in template '#{File.basename(path)}' (#{where}#{e.message})" }]
    end
    [0, { 'output' => output, 'properties' => context.read.uniq, 'link_properties' => context.read_links.uniq,
          'links' => context.links_used.uniq }]
  end
end

request = JSON.parse($stdin.read)
if request.key?('batch')
  # Several templates in one run (a whole job): {"batch": [REQUEST...]} -> {"batch": [ANSWER...]}.
  answers = request['batch'].map { |one| RenderHarness.run(one)[1] }
  $stdout.write(JSON.generate({ 'batch' => answers }))
  exit 0
end
status, result = RenderHarness.run(request)
$stdout.write(JSON.generate(result))
exit status
